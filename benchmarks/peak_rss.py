"""Peak resident memory of one call, measured in a fresh process (benchmarks and the tiling memory tests)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common import current_rss_bytes, peak_rss_bytes
from drn_lightning.inference import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_PASSES, Upscaler
from drn_lightning.models import build_drn

__all__ = ["PeakRss", "peak_rss_of", "random_upscaler", "upscale_peak_rss"]


@dataclass(frozen=True)
class PeakRss:
    """Peak resident memory of a child process that ran one call, and its RSS just before the call."""

    peak_bytes: int
    baseline_bytes: int

    @property
    def call_bytes(self) -> int:
        """Memory the call itself added on top of the interpreter, torch and its arguments."""
        return self.peak_bytes - self.baseline_bytes


def _rss_child(conn: Any, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    try:
        baseline = current_rss_bytes()
        fn(*args, **kwargs)
        conn.send(("ok", peak_rss_bytes(), baseline))
    except BaseException as err:  # report the failure to the parent instead of dying silently
        conn.send(("error", f"{type(err).__name__}: {err}", 0))
    finally:
        conn.close()


def peak_rss_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> PeakRss:
    """Run `fn(*args, **kwargs)` in a fresh spawned process and return its peak RSS (VmHWM on Linux).

    A fresh process means earlier work in this one cannot inflate the number; `fn` and its
    arguments must be picklable (a module-level function).
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_rss_child, args=(child, fn, args, kwargs))
    proc.start()
    child.close()
    try:
        status, value, baseline = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"peak_rss_of: child process died with exit code {proc.exitcode}") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"peak_rss_of: {value}")
    return PeakRss(peak_bytes=int(value), baseline_bytes=int(baseline))


def random_upscaler(
    variant: str, scale: int, size: tuple[int, int], device: str = "cpu", **tiling: Any
) -> tuple[Upscaler, np.ndarray]:
    """A seeded random-weight variant in an `Upscaler` and a seeded random (H, W, 3) uint8 image to upscale."""
    torch.manual_seed(0)
    primal, _ = build_drn(variant, scale, dual=False)
    image = np.random.default_rng(0).integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
    return Upscaler(primal, device=device, **tiling), image


def _upscale_random_job(
    variant: str, scale: int, size: tuple[int, int], tile: int | None, tile_overlap: int, tile_passes: int
) -> None:
    """Child-side job of `upscale_peak_rss`."""
    upscaler, image = random_upscaler(
        variant, scale, size, tile=tile, tile_overlap=tile_overlap, tile_passes=tile_passes
    )
    upscaler(image)


def upscale_peak_rss(
    variant: str = "drn_s",
    scale: int = 4,
    size: tuple[int, int] = (1024, 1024),
    tile: int | None = 128,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    tile_passes: int = DEFAULT_TILE_PASSES,
) -> PeakRss:
    """Peak CPU RSS of upscaling a `size` (H, W) uint8 image with a (random-weight) variant, for benchmarks."""
    return peak_rss_of(_upscale_random_job, variant, scale, tuple(size), tile, tile_overlap, tile_passes)
