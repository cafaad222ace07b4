"""What the SR datasets share: LR-pyramid geometry, aligned crops and flips, the on-disk LR cache, and validated
lists of HR images (with optional LR files) that serve mod-cropped uint8 pyramids.

LR level ``k`` has factor ``f = scale / 2**k`` relative to the HR: an HR patch at ``(y, x)`` of
size ``p`` (``y``, ``x`` multiples of ``scale``) corresponds exactly to the LR crop at
``(y / f, x / f)`` of size ``p / f`` at that level.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from drn_lightning.data.io import ImageReadError, read_image, read_image_size
from drn_lightning.files import atomic_write

log = logging.getLogger(__name__)

SampleKey = tuple[int, int]
_CACHE_VERSION = "1"


def pyramid_factors(scale: int) -> list[int]:
    """Downscale factors of DRN's LR levels, coarse to fine (x8 -> [8, 4, 2]): one per x2 block."""
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 2 or scale & (scale - 1):
        raise ValueError(f"scale must be a power of two >= 2 (2, 4, 8, ...), got {scale!r}")
    scale = int(scale)
    return [scale >> k for k in range(int(math.log2(scale)))]


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so H and W are multiples of scale, as the SR benchmarks do."""
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def crop_pyramid(
    hr: np.ndarray | None,
    lrs: Sequence[np.ndarray],
    factors: Sequence[int],
    patch_size: int,
    y: int,
    x: int,
) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """Cut the HR patch at (y, x) and the matching patch of every LR level (factor f: (y/f, x/f))."""
    hr_patch = None if hr is None else hr[y : y + patch_size, x : x + patch_size]
    lr_patches = []
    for lr, f in zip(lrs, factors, strict=True):
        if y % f or x % f or patch_size % f:
            raise ValueError(f"crop ({y}, {x}) size {patch_size} is not aligned to LR factor {f}")
        q = patch_size // f
        lr_patches.append(lr[y // f : y // f + q, x // f : x // f + q])
    return hr_patch, lr_patches


def augment_arrays(arrays: Sequence[np.ndarray], hflip: bool, vflip: bool, transpose: bool) -> list[np.ndarray]:
    """Apply one dihedral transform to all levels alike, so LR and HR patches stay aligned."""
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        if transpose:
            a = a.transpose(1, 0, 2)
        out.append(a)
    return out


def to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in 0-255, the range the models work in."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32)


def random_flags(augment: bool, generator: torch.Generator | None = None) -> tuple[bool, bool, bool]:
    """Three fair coin flips (h-flip, v-flip, transpose) from the sample's generator, else torch's global RNG."""
    if not augment:
        return False, False, False
    flips = torch.rand(3, generator=generator) < 0.5
    return bool(flips[0]), bool(flips[1]), bool(flips[2])


def randint(high: int, generator: torch.Generator | None = None) -> int:
    """Uniform integer in [0, high) from the sample's generator, else torch's global RNG."""
    return int(torch.randint(high, (1,), generator=generator).item())


def split_key(key: int | SampleKey) -> tuple[int, int | None]:
    """``index`` -> (index, None: use the global RNG); ``(index, seed)`` -> (index, seed)."""
    if isinstance(key, tuple):
        if len(key) != 2:
            raise TypeError(f"a sample key is an index or (index, seed), got {key!r}")
        return int(key[0]), int(key[1])
    return int(key), None


def admit(path: Path, accept: Callable[[], bool], on_bad_file: str, skipped: list[Path]) -> bool:
    """Run one file's checks (`accept`: sizes, optional decoding; False = too small, already warned about).

    True keeps the file. An unreadable file raises, or under on_bad_file='skip' is warned about; either way a
    file that is not kept is listed in `skipped`.
    """
    try:
        if accept():
            return True
    except (ImageReadError, OSError) as exc:
        if on_bad_file == "raise":
            raise
        log.warning("skipping unreadable image %s: %s", path, exc)
    skipped.append(path)
    return False


def load_readable(
    index: int,
    count: int,
    load: Callable[[int], Any],
    path_of: Callable[[int], Path],
    on_bad_file: str,
    bad: set[int],
    source: Path,
) -> tuple[int, Any]:
    """Item `index`, or under on_bad_file='skip' the next readable one: a file that breaks only when it is
    decoded lazily is warned about once per process and routed around after that."""
    for attempt in range(count):
        j = (index + attempt) % count
        if j in bad:
            continue
        try:
            return j, load(j)
        except (ImageReadError, OSError) as exc:
            if on_bad_file == "raise":
                raise
            bad.add(j)
            log.warning("skipping unreadable image %s: %s", path_of(j), exc)
    raise ImageReadError(f"{source}: no readable image left")


def default_lr_cache_dir(hr_dir: str | os.PathLike[str]) -> Path:
    """``<hr_dir parent>/.drn_cache/<hr_dir name>`` when writable, else a per-user cache folder."""
    hr_dir = Path(hr_dir).expanduser().resolve()
    beside = hr_dir.parent / ".drn_cache" / hr_dir.name
    if _writable(beside):
        return beside
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha1(os.fsencode(hr_dir)).hexdigest()[:12]
    return base / "drn_lightning" / "lr_cache" / f"{hr_dir.name}-{digest}"


def _writable(folder: Path) -> bool:
    """Whether the folder exists or can be created, and accepts new files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


class LRCache:
    """Disk cache of bicubic LR pyramids made with ``lr_pyramid``, keyed by HR path, size and mtime.

    A changed HR file gets a new key and is regenerated; entries of old versions are left
    orphaned (the folder is safe to delete at any time). Writes are atomic, so several ranks or
    workers filling the cache at once only repeat work.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], scale: int, method: str = "bicubic") -> None:
        """Remember where to cache and which pyramid (scale, degradation) the entries hold."""
        self.cache_dir = Path(cache_dir).expanduser()
        self.scale = int(scale)
        self.method = method
        self.factors = pyramid_factors(self.scale)

    def paths(self, hr_path: Path) -> list[Path]:
        """Cache file of every level for this HR file version, coarse to fine."""
        st = hr_path.stat()
        ident = f"{hr_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|x{self.scale}|{self.method}|v{_CACHE_VERSION}"
        key = hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()[:16]  # any file name
        return [self.cache_dir / f"{hr_path.stem}__{key}_x{f}.png" for f in self.factors]

    def get(self, hr_path: Path, hr: np.ndarray, max_pixels: int | None = None) -> list[np.ndarray]:
        """LR levels of the (mod-cropped) HR array: read from disk when cached, else made and stored."""
        paths = self.paths(hr_path)
        expected = [(hr.shape[0] // f, hr.shape[1] // f) for f in self.factors]
        if all(p.is_file() for p in paths):
            try:
                levels = [read_image(p, max_pixels) for p in paths]
                if [lv.shape[:2] for lv in levels] == expected:
                    return levels
                log.warning("LR cache entry for %s has stale sizes; regenerating", hr_path)
            except (ImageReadError, OSError) as exc:
                log.warning("LR cache entry for %s unreadable (%s); regenerating", hr_path, exc)
        levels = self.make(hr)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for level, path in zip(levels, paths, strict=True):
                atomic_write(path, partial(_save_png, level))
        except OSError as exc:
            log.warning("could not write LR cache %s (%s); continuing without it", self.cache_dir, exc)
        return levels

    def make(self, hr: np.ndarray) -> list[np.ndarray]:
        """Compute the pyramid from a uint8 HR array (uint8 in -> uint8 out, like stored PNGs)."""
        from drn_lightning.ops.degrade import lr_pyramid

        hr_t = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1)))
        levels = lr_pyramid(hr_t, self.scale, method=self.method)
        return [np.ascontiguousarray(lv.to(torch.uint8).permute(1, 2, 0).numpy()) for lv in levels]


def _save_png(image: np.ndarray, handle: IO[bytes]) -> None:
    Image.fromarray(image).save(handle, format="PNG", compress_level=1)


@dataclass
class _Entry:
    """One usable image: its HR file and, per LR level, a file or None (= generate)."""

    hr_path: Path
    lr_paths: list[Path | None]


def _check_lr_size(
    lr_size: tuple[int, int],
    hr_size: tuple[int, int],
    factor: int,
    scale: int,
    lr_path: Path,
    hr_path: Path,
) -> tuple[int, int]:
    """LR size must cover HR/f after mod-crop and not exceed ceil(HR/f); returns the crop size."""
    h, w = hr_size
    hm, wm = h - h % scale, w - w % scale
    need = (hm // factor, wm // factor)
    most = (math.ceil(h / factor), math.ceil(w / factor))
    if not (need[0] <= lr_size[0] <= most[0] and need[1] <= lr_size[1] <= most[1]):
        raise ValueError(
            f"LR/HR size mismatch: LR file {lr_path} is {lr_size[1]}x{lr_size[0]} (WxH) but HR file "
            f"{hr_path} is {w}x{h} ({wm}x{hm} after cropping to a multiple of scale {scale}), "
            f"so its x{factor} level must be {need[1]}x{need[0]} (up to {most[1]}x{most[0]})"
        )
    return need


def div2k_lr_paths(lr_dir: Path, hr_path: Path, factors: Sequence[int]) -> list[Path | None]:
    """DIV2K naming: ``lr_dir/X{f}/{stem}x{f}.png`` for every level."""
    return [lr_dir / f"X{f}" / f"{hr_path.stem}x{f}.png" for f in factors]


class PyramidImages:
    """Validates a list of HR files (+ optional LR files) and serves mod-cropped uint8 pyramids."""

    def __init__(
        self,
        hr_files: Sequence[Path],
        lr_lookup: Callable[[Path], list[Path | None]],
        scale: int,
        min_size: int,
        lr_cache: LRCache | None,
        cache_in_memory: bool,
        on_bad_file: str,
        max_pixels: int | None,
        what: str,
    ) -> None:
        """Read headers (or whole images when caching in memory) and drop unusable files."""
        self.scale = scale
        self.factors = pyramid_factors(scale)
        self.lr_cache = lr_cache
        self.cache_in_memory = cache_in_memory
        self.on_bad_file = on_bad_file
        self.max_pixels = max_pixels
        self.entries: list[_Entry] = []
        self.skipped: list[Path] = []
        self._memory: list[tuple[np.ndarray, list[np.ndarray]]] = []
        for hr_path in hr_files:
            lr_paths: list[Path | None] = lr_lookup(hr_path)
            for lr_path in lr_paths:
                if lr_path is not None and not lr_path.is_file():
                    raise FileNotFoundError(f"LR file {lr_path} for HR file {hr_path} does not exist")
            entry = _Entry(hr_path, lr_paths)
            if admit(hr_path, partial(self._accept, entry, min_size), on_bad_file, self.skipped):
                self.entries.append(entry)
        if not self.entries:
            raise ValueError(
                f"{what}: no usable images left ({len(self.skipped)} skipped as unreadable or "
                f"smaller than {min_size}x{min_size}): {[p.name for p in self.skipped][:10]}"
            )

    def __len__(self) -> int:
        """Number of usable images."""
        return len(self.entries)

    def _accept(self, entry: _Entry, min_size: int) -> bool:
        """Header checks (LR/HR size mismatches raise here), then decode into memory when caching."""
        h, w = self._check_headers(entry)
        if h < min_size or w < min_size:
            log.warning(
                "skipping %s: %dx%d (WxH, after cropping to a multiple of scale %d) is smaller than the %dx%d patch needed",
                entry.hr_path,
                w,
                h,
                self.scale,
                min_size,
                min_size,
            )
            return False
        if self.cache_in_memory:
            self._memory.append(self._load(entry))
        return True

    def _check_headers(self, entry: _Entry) -> tuple[int, int]:
        """Validate HR/LR sizes from headers only; returns the mod-cropped HR size."""
        h, w = read_image_size(entry.hr_path, self.max_pixels)
        for f, lr_path in zip(self.factors, entry.lr_paths, strict=True):
            if lr_path is not None:
                _check_lr_size(read_image_size(lr_path, self.max_pixels), (h, w), f, self.scale, lr_path, entry.hr_path)
        return h - h % self.scale, w - w % self.scale

    def _load(self, entry: _Entry) -> tuple[np.ndarray, list[np.ndarray]]:
        """Decode the HR, mod-crop it, and get each LR level from its file or the cache."""
        full = read_image(entry.hr_path, self.max_pixels)
        hr = mod_crop(full, self.scale)
        lrs: list[np.ndarray | None] = []
        for f, lr_path in zip(self.factors, entry.lr_paths, strict=True):
            if lr_path is None:
                lrs.append(None)
                continue
            lr = read_image(lr_path, self.max_pixels)
            nh, nw = _check_lr_size(lr.shape[:2], full.shape[:2], f, self.scale, lr_path, entry.hr_path)
            lrs.append(np.ascontiguousarray(lr[:nh, :nw]))
        if any(lv is None for lv in lrs):
            if hr.shape[0] < self.scale or hr.shape[1] < self.scale:
                raise ImageReadError(f"{entry.hr_path}: image smaller than scale {self.scale}")
            assert self.lr_cache is not None
            made = self.lr_cache.get(entry.hr_path, hr, self.max_pixels)
            lrs = [m if lv is None else lv for lv, m in zip(lrs, made, strict=True)]
        return hr, [lv for lv in lrs if lv is not None]

    def get(self, i: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """The i-th mod-cropped HR and its LR levels (uint8 HWC), from memory or disk."""
        if self.cache_in_memory:
            return self._memory[i]
        return self._load(self.entries[i])
