"""DRN's LR pyramid and the LR cache of its levels, keyed by the HR file's path, size and mtime (safe to delete)."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from drn_lightning.data.io import ImageReadError, read_image
from drn_lightning.data.prepare import progress, save_png
from drn_lightning.files import atomic_write
from drn_lightning.options import OptionError

log = logging.getLogger(__name__)

_VERSION = "1"


def pyramid_factors(scale: int) -> list[int]:
    """Downscale factors of DRN's LR levels, coarse to fine (x8 -> [8, 4, 2]): one per x2 block."""
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 2 or scale & (scale - 1):
        raise OptionError("scale", scale, "must be a power of two >= 2 (2, 4, 8, ...)")
    return [int(scale) >> k for k in range(int(scale).bit_length() - 1)]


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so H and W are multiples of scale, as the SR benchmarks do."""
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def chw(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor, as the degradations take it."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def hwc(image: Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) uint8 array, like a stored PNG."""
    return np.ascontiguousarray(image.to(torch.uint8).permute(1, 2, 0).numpy())


def file_key(paths: Iterable[Path], *extra: object) -> str:
    """A short digest of the files' resolved paths (their bytes: any name works), sizes and mtimes, and `extra`."""
    parts = [os.fsencode(p.resolve()) + f"|{p.stat().st_size}|{p.stat().st_mtime_ns}".encode() for p in paths]
    return hashlib.sha1(b"|".join([*parts, *(str(e).encode() for e in (*extra, _VERSION))])).hexdigest()[:16]


class LRCache:
    """LR levels of HR files as PNGs written atomically (ranks share them); x{scale} is `drn-sr data pyramid`'s file."""

    def __init__(self, cache_dir: str | os.PathLike[str], scale: int, method: str = "bicubic") -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.scale, self.method, self.factors = int(scale), method, pyramid_factors(scale)

    def paths(self, hr_path: Path, factors: Sequence[int] | None = None) -> list[Path]:
        """Cache file of each level (default: all, coarse to fine) for this HR file version."""
        key, factors = file_key([hr_path], f"x{self.scale}", self.method), self.factors if factors is None else factors
        return [self.cache_dir / f"{hr_path.stem}__{key}_x{f}.png" for f in factors]

    def get(
        self, hr_path: Path, hr: np.ndarray, factors: Sequence[int] | None = None, max_pixels: int | None = None
    ) -> list[np.ndarray]:
        """Levels of the (mod-cropped) HR array: read when cached, else made and stored."""
        factors = list(self.factors if factors is None else factors)
        paths = self.paths(hr_path, factors)
        if all(p.is_file() for p in paths):
            try:
                levels = [read_image(p, max_pixels) for p in paths]
                if [lv.shape[:2] for lv in levels] == [(hr.shape[0] // f, hr.shape[1] // f) for f in factors]:
                    return levels
                log.warning("LR cache entry for %s has stale sizes; regenerating", hr_path)
            except (ImageReadError, OSError) as exc:
                log.warning("LR cache entry for %s unreadable (%s); regenerating", hr_path, exc)
        from drn_lightning.ops.degrade import DEGRADATIONS

        levels = [hwc(DEGRADATIONS[self.method](chw(hr), f)) for f in factors]  # as lr_pyramid makes them
        try:
            for level, path in zip(levels, paths, strict=True):
                atomic_write(path, partial(save_png, level))  # the encoder of `drn-sr data pyramid`: the same bytes
        except OSError as exc:
            log.warning("could not write LR cache %s (%s); continuing without it", self.cache_dir, exc)
        return levels


def run_all(jobs: Sequence[Any], fn: Callable[[Any], Any], what: str, workers: int = 8) -> list[str | None]:
    """fn(job) for every job on DataLoader worker processes, with progress; per job, an unreadable image's error."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fork = "fork" in multiprocessing.get_all_start_methods()  # forked workers: the jobs' function is never pickled
    workers = max(0, min(workers, cpus, len(jobs) - 1)) if fork else 0
    context = "fork" if workers else None  # forked even inside spawned (joblib) jobs
    loader = DataLoader(_Jobs(jobs, fn), batch_size=None, num_workers=workers, multiprocessing_context=context)
    out: list[str | None] = []
    with progress(what, len(jobs), "images", emit=log.info) as advance:
        for error in loader:
            out.append(error)
            advance(1)
    return out


class _Jobs(torch.utils.data.Dataset[Any]):
    """fn(jobs[i]) as a dataset, so DataLoader's workers run it (forked: nothing is pickled)."""

    def __init__(self, jobs: Sequence[Any], fn: Callable[[Any], Any]) -> None:
        self.jobs, self.fn = jobs, fn

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> str | None:
        try:
            self.fn(self.jobs[i])  # its result stays in the worker
        except (ImageReadError, OSError) as exc:
            return str(exc)
        return None
