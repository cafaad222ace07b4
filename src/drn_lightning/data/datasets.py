"""Folder-based SR datasets producing DRN's multi-level samples.

Every sample is a dict the training module consumes as is::

    {"lr": [coarsest, ..., finest LR]   # x4 -> [p/4, p/2], x8 -> [p/8, p/4, p/2], x2 -> [p/2]
     "hr": Tensor (3, p, p),            # float32, 0-255
     "paired": Tensor(bool),            # scalar; False = only lr[0] is real data
     "name": str}                       # source file name, for error messages

Unpaired samples carry zero tensors of the right shapes in place of the missing levels and HR,
so paired and unpaired samples go through PyTorch's default collate into one batch. Benchmark
samples are whole images (batch 1) and add ``"set": str``.

LR level ``k`` has factor ``f = scale / 2**k`` relative to the HR: an HR patch at ``(y, x)`` of
size ``p`` (``y``, ``x`` multiples of ``scale``) corresponds exactly to the LR crop at
``(y / f, x / f)`` of size ``p / f`` at that level.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from drn_lightning.data.io import (
    ImageReadError,
    check_on_bad_file,
    list_images,
    read_image,
    read_image_size,
)

__all__ = [
    "BenchmarkDataset",
    "LRCache",
    "KeyedConcatDataset",
    "PairedDataset",
    "SampleKey",
    "UnpairedDataset",
    "augment_arrays",
    "crop_pyramid",
    "default_lr_cache_dir",
    "mod_crop",
    "pyramid_factors",
    "to_tensor",
]

log = logging.getLogger(__name__)

Sample = dict[str, Any]
# (index, seed): the sample's crop and flips come from its own seed, so they do not depend on which process,
# worker or rank loads it, nor on what was loaded before (exact resume, distinct crops per DDP rank).
SampleKey = tuple[int, int]
_CACHE_VERSION = "1"


# --------------------------------------------------------------------------- validation helpers


def pyramid_factors(scale: int) -> list[int]:
    """Downscale factors of DRN's LR levels, coarse to fine (x8 -> [8, 4, 2]): one per x2 block."""
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 2 or scale & (scale - 1):
        raise ValueError(f"scale must be a power of two >= 2 (2, 4, 8, ...), got {scale!r}")
    scale = int(scale)
    return [scale >> k for k in range(int(math.log2(scale)))]


def _check_patch_size(patch_size: int, scale: int) -> int:
    """Patches must tile every LR level exactly, so patch_size must be a positive multiple of scale."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int | np.integer) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    if patch_size % scale:
        raise ValueError(
            f"patch_size ({patch_size}) must be a multiple of scale ({scale}) so every LR level "
            f"gets a whole-pixel patch; e.g. patch_size={patch_size - patch_size % scale or scale}"
        )
    return int(patch_size)


def _check_samples_per_epoch(samples_per_epoch: int | None) -> int | None:
    """None (one sample per image) or a positive count."""
    if samples_per_epoch is None:
        return None
    if isinstance(samples_per_epoch, bool) or int(samples_per_epoch) != samples_per_epoch or samples_per_epoch < 1:
        raise ValueError(f"samples_per_epoch must be None or a positive integer, got {samples_per_epoch!r}")
    return int(samples_per_epoch)


def _require_dir(path: str | os.PathLike[str], option: str) -> Path:
    """Fail early on a missing folder, naming the option that pointed at it."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{option}: {folder} {what}")
    return folder


# --------------------------------------------------------------------------- array helpers


def _admit(path: Path, accept: Callable[[], bool], on_bad_file: str, skipped: list[Path]) -> bool:
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


def _load_readable(
    index: int, count: int, load: Callable[[int], Any], path_of: Callable[[int], Path],
    on_bad_file: str, bad: set[int], source: Path,
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


def augment_arrays(
    arrays: Sequence[np.ndarray], hflip: bool, vflip: bool, transpose: bool
) -> list[np.ndarray]:
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


def _random_flags(augment: bool, generator: torch.Generator | None = None) -> tuple[bool, bool, bool]:
    """Three fair coin flips (h-flip, v-flip, transpose) from the sample's generator, else torch's global RNG."""
    if not augment:
        return False, False, False
    flips = torch.rand(3, generator=generator) < 0.5
    return bool(flips[0]), bool(flips[1]), bool(flips[2])


def _randint(high: int, generator: torch.Generator | None = None) -> int:
    """Uniform integer in [0, high) from the sample's generator, else torch's global RNG."""
    return int(torch.randint(high, (1,), generator=generator).item())


def _split_key(key: int | SampleKey) -> tuple[int, int | None]:
    """``index`` -> (index, None: use the global RNG); ``(index, seed)`` -> (index, seed)."""
    if isinstance(key, tuple):
        if len(key) != 2:
            raise TypeError(f"a sample key is an index or (index, seed), got {key!r}")
        return int(key[0]), int(key[1])
    return int(key), None


# --------------------------------------------------------------------------- LR pyramid cache


def default_lr_cache_dir(hr_dir: str | os.PathLike[str]) -> Path:
    """``<hr_dir parent>/.drn_cache/<hr_dir name>`` when writable, else a per-user cache folder."""
    hr_dir = Path(hr_dir).expanduser().resolve()
    beside = hr_dir.parent / ".drn_cache" / hr_dir.name
    if _writable(beside):
        return beside
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha1(str(hr_dir).encode()).hexdigest()[:12]
    return base / "drn_lightning" / "lr_cache" / f"{hr_dir.name}-{digest}"


def _writable(folder: Path) -> bool:
    """Whether the folder exists or can be created, and accepts new files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _atomic_write_png(image: np.ndarray, path: Path) -> None:
    """Write a PNG via a unique temp file and os.replace, so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        Image.fromarray(image).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
        key = hashlib.sha1(ident.encode()).hexdigest()[:16]
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
                _atomic_write_png(level, path)
        except OSError as exc:
            log.warning("could not write LR cache %s (%s); continuing without it", self.cache_dir, exc)
        return levels

    def make(self, hr: np.ndarray) -> list[np.ndarray]:
        """Compute the pyramid from a uint8 HR array (uint8 in -> uint8 out, like stored PNGs)."""
        from drn_lightning.ops.degrade import lr_pyramid

        hr_t = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1)))
        levels = lr_pyramid(hr_t, self.scale, method=self.method)
        return [np.ascontiguousarray(lv.to(torch.uint8).permute(1, 2, 0).numpy()) for lv in levels]


# --------------------------------------------------------------------------- shared loading


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


def _div2k_lr_paths(lr_dir: Path, hr_path: Path, factors: Sequence[int]) -> list[Path | None]:
    """DIV2K naming: ``lr_dir/X{f}/{stem}x{f}.png`` for every level."""
    return [lr_dir / f"X{f}" / f"{hr_path.stem}x{f}.png" for f in factors]


class _PyramidImages:
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
            if _admit(hr_path, partial(self._accept, entry, min_size), on_bad_file, self.skipped):
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
                entry.hr_path, w, h, self.scale, min_size, min_size,
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


# --------------------------------------------------------------------------- datasets


class _PatchDataset(Dataset[Sample]):
    """What the training datasets share: scale, patch size, augmentation and the epoch length."""

    def _set_patch_options(self, scale: int, patch_size: int, augment: bool, samples_per_epoch: int | None) -> None:
        self.factors = pyramid_factors(scale)
        self.scale = int(scale)
        self.patch_size = _check_patch_size(patch_size, self.scale)
        self.augment = bool(augment)
        self.samples_per_epoch = _check_samples_per_epoch(samples_per_epoch)

    @property
    def num_images(self) -> int:
        """Number of usable images."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Samples per epoch: ``samples_per_epoch`` or one per image."""
        return self.samples_per_epoch or self.num_images

    def __getitem__(self, key: int | SampleKey) -> Sample:
        """A random patch: from torch's global RNG for an index, from the key's own seed for ``(index, seed)``."""
        index, seed = _split_key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return self._sample(index, None if seed is None else torch.Generator().manual_seed(seed))

    def _sample(self, index: int, generator: torch.Generator | None) -> Sample:
        raise NotImplementedError


class PairedDataset(_PatchDataset):
    """Random aligned HR/LR-pyramid patches from a DIV2K/DF2K-style folder or an HR-only folder.

    With ``lr_dir``: LR level f is read from ``lr_dir/X{f}/{stem}x{f}.png``. Without it the pyramid
    is made once with ``lr_pyramid`` (MATLAB bicubic) and cached as PNGs under ``lr_cache_dir``
    (default :func:`default_lr_cache_dir`). ``samples_per_epoch`` decouples the epoch length from
    the image count (sample ``i`` uses image ``i % n``).
    """

    def __init__(
        self,
        hr_dir: str | os.PathLike[str],
        scale: int,
        patch_size: int,
        lr_dir: str | os.PathLike[str] | None = None,
        lr_cache_dir: str | os.PathLike[str] | None = None,
        augment: bool = True,
        samples_per_epoch: int | None = None,
        on_bad_file: str = "raise",
        cache_in_memory: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        """Validate options, list and check the files, and (by default) decode them into memory."""
        self._set_patch_options(scale, patch_size, augment, samples_per_epoch)
        check_on_bad_file(on_bad_file)
        self.hr_dir = _require_dir(hr_dir, "hr_dir")
        hr_files = list_images(self.hr_dir)
        self.lr_dir: Path | None = None
        self.lr_cache: LRCache | None = None
        if lr_dir is not None:
            self.lr_dir = _require_dir(lr_dir, "lr_dir")
            for f in self.factors:
                _require_dir(self.lr_dir / f"X{f}", f"lr_dir (x{f} level)")
            lr_root = self.lr_dir

            def lookup(p: Path) -> list[Path | None]:
                return _div2k_lr_paths(lr_root, p, self.factors)
        else:
            cache_dir = Path(lr_cache_dir).expanduser() if lr_cache_dir else default_lr_cache_dir(self.hr_dir)
            self.lr_cache = LRCache(cache_dir, self.scale)

            def lookup(p: Path) -> list[Path | None]:
                return [None] * len(self.factors)

        self._images = _PyramidImages(
            hr_files, lookup, self.scale, self.patch_size, self.lr_cache,
            bool(cache_in_memory), on_bad_file, max_pixels, f"hr_dir {self.hr_dir}",
        )
        self.on_bad_file = on_bad_file
        self._bad: set[int] = set()

    @property
    def files(self) -> list[Path]:
        """HR files in use (unreadable and too-small ones removed), in index order."""
        return [e.hr_path for e in self._images.entries]

    @property
    def num_images(self) -> int:
        """Number of usable HR images."""
        return len(self._images)

    def load_full(self, image_index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Whole mod-cropped HR and LR levels (uint8 HWC) of one image, for checks and debugging."""
        return self._images.get(image_index)

    def _get_image(self, i: int) -> tuple[int, np.ndarray, list[np.ndarray]]:
        """Load image i; under on_bad_file='skip' a file that breaks lazily is replaced by the next."""
        j, (hr, lrs) = _load_readable(
            i, len(self._images), self._images.get, lambda k: self._images.entries[k].hr_path,
            self.on_bad_file, self._bad, self.hr_dir,
        )
        return j, hr, lrs

    def _sample(self, index: int, generator: torch.Generator | None) -> Sample:
        """A random scale-aligned patch with its exact LR crops, identically augmented."""
        j, hr, lrs = self._get_image(index % len(self._images))
        p, s = self.patch_size, self.scale
        y = s * _randint((hr.shape[0] - p) // s + 1, generator)
        x = s * _randint((hr.shape[1] - p) // s + 1, generator)
        hr_patch, lr_patches = crop_pyramid(hr, lrs, self.factors, p, y, x)
        assert hr_patch is not None
        arrays = augment_arrays([hr_patch, *lr_patches], *_random_flags(self.augment, generator))
        return {
            "lr": [to_tensor(a) for a in arrays[1:]],
            "hr": to_tensor(arrays[0]),
            "paired": torch.tensor(True),
            "name": self._images.entries[j].hr_path.name,
        }


class UnpairedDataset(_PatchDataset):
    """LR-only patches for DRN's unpaired (dual-regression-only) data.

    Give ``lr_dir`` (real LR images, cropped to ``patch_size / scale``) or ``hr_dir`` (each HR is
    mod-cropped, degraded once by ``degradation`` from ``DEGRADATIONS`` and only the LR kept).
    Samples have ``paired=False``; their finer LR levels and HR are zeros of the right shape.
    """

    def __init__(
        self,
        scale: int,
        patch_size: int,
        lr_dir: str | os.PathLike[str] | None = None,
        hr_dir: str | os.PathLike[str] | None = None,
        degradation: str = "nearest",
        augment: bool = True,
        samples_per_epoch: int | None = None,
        on_bad_file: str = "raise",
        cache_in_memory: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        """Validate options and load (or list) the LR images."""
        from drn_lightning.ops.degrade import DEGRADATIONS

        self._set_patch_options(scale, patch_size, augment, samples_per_epoch)
        self.lr_patch = self.patch_size // self.scale
        self.on_bad_file = check_on_bad_file(on_bad_file)
        self.max_pixels = max_pixels
        if (lr_dir is None) == (hr_dir is None):
            raise ValueError(
                "UnpairedDataset needs exactly one of lr_dir (real LR images) or hr_dir "
                f"(HR images to degrade), got lr_dir={lr_dir!r}, hr_dir={hr_dir!r}"
            )
        if hr_dir is not None and degradation not in DEGRADATIONS:
            raise ValueError(f"degradation must be one of {sorted(DEGRADATIONS)}, got {degradation!r}")
        self.degradation = degradation
        self.cache_in_memory = bool(cache_in_memory) or hr_dir is not None
        folder = _require_dir(lr_dir if lr_dir is not None else hr_dir, "lr_dir" if lr_dir is not None else "hr_dir")  # type: ignore[arg-type]
        self.source_dir = folder
        self.from_hr = hr_dir is not None
        self.files: list[Path] = []
        self.skipped: list[Path] = []
        self._bad: set[int] = set()
        self._memory: list[np.ndarray] = []
        for path in list_images(folder):
            if _admit(path, partial(self._accept, path, DEGRADATIONS), on_bad_file, self.skipped):
                self.files.append(path)
        if not self.files:
            raise ValueError(
                f"{'hr_dir' if self.from_hr else 'lr_dir'} {folder}: no usable images left "
                f"({len(self.skipped)} skipped): {[p.name for p in self.skipped][:10]}"
            )

    def _accept(self, path: Path, degradations: dict[str, Any]) -> bool:
        """Size check from the header (the LR size after degrading, for HR files), then decode when caching."""
        h, w = read_image_size(path, self.max_pixels)
        if self.from_hr:
            h, w = h // self.scale, w // self.scale  # LR size after mod-crop + degrade
        if h < self.lr_patch or w < self.lr_patch:
            need = self.patch_size if self.from_hr else self.lr_patch
            log.warning("skipping %s: too small for a %dx%d patch (LR size %dx%d WxH)", path, need, need, w, h)
            return False
        if self.cache_in_memory:
            self._memory.append(self._load(path, degradations))
        return True

    def _load(self, path: Path, degradations: dict[str, Any] | None = None) -> np.ndarray:
        """Decode an LR file, or decode + mod-crop + degrade an HR file (uint8 in, uint8 out)."""
        image = read_image(path, self.max_pixels)
        if not self.from_hr:
            return image
        hr = mod_crop(image, self.scale)
        if degradations is None:
            from drn_lightning.ops.degrade import DEGRADATIONS as degradations
        hr_t = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1)))
        lr = degradations[self.degradation](hr_t, self.scale).to(torch.uint8)
        return np.ascontiguousarray(lr.permute(1, 2, 0).numpy())

    @property
    def num_images(self) -> int:
        """Number of usable images."""
        return len(self.files)

    def load_full(self, image_index: int) -> np.ndarray:
        """Whole LR image (uint8 HWC) patches are cut from, for checks and debugging."""
        if self.cache_in_memory:
            return self._memory[image_index]
        return self._load(self.files[image_index])

    def _sample(self, index: int, generator: torch.Generator | None) -> Sample:
        """A random LR patch with zero placeholders for the levels and HR it does not have."""
        j, lr = _load_readable(
            index % len(self.files), len(self.files), self.load_full, self.files.__getitem__,
            self.on_bad_file, self._bad, self.source_dir,
        )
        q = self.lr_patch
        y = _randint(lr.shape[0] - q + 1, generator)
        x = _randint(lr.shape[1] - q + 1, generator)
        (patch,) = augment_arrays([lr[y : y + q, x : x + q]], *_random_flags(self.augment, generator))
        placeholders = [torch.zeros(3, self.patch_size // f, self.patch_size // f) for f in self.factors[1:]]
        return {
            "lr": [to_tensor(patch), *placeholders],
            "hr": torch.zeros(3, self.patch_size, self.patch_size),
            "paired": torch.tensor(False),
            "name": self.files[j].name,
        }


class KeyedConcatDataset(ConcatDataset[Sample]):
    """``ConcatDataset`` that also takes ``(index, seed)`` keys, passing the seed on to the part holding ``index``."""

    def __getitem__(self, key: int | SampleKey) -> Sample:  # type: ignore[override]
        index, seed = _split_key(key)
        if seed is None:
            return super().__getitem__(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = bisect.bisect_right(self.cumulative_sizes, index)
        offset = self.cumulative_sizes[part - 1] if part else 0
        return self.datasets[part][(index - offset, seed)]


class BenchmarkDataset(Dataset[Sample]):
    """Whole-image evaluation set (Set5/Set14/B100/Urban100/Manga109/DIV2K-val or a photo folder).

    ``root/set_name`` holds either ``HR/`` (+ optional ``LR_bicubic/X{f}/{stem}x{f}.png``) or the HR
    images directly. HR is mod-cropped to ``scale``; LR levels come from the files when present,
    else from ``lr_pyramid`` (MATLAB bicubic on the uint8 HR, uint8 result like a stored PNG),
    cached on disk.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        set_name: str,
        scale: int,
        name: str | None = None,
        lr_cache_dir: str | os.PathLike[str] | None = None,
        cache_in_memory: bool = True,
        on_bad_file: str = "raise",
        max_pixels: int | None = None,
    ) -> None:
        """Find the HR (and LR) files of the set and validate their sizes."""
        self.factors = pyramid_factors(scale)
        self.scale = int(scale)
        self.set_name = str(set_name)
        self.name = str(name) if name else self.set_name
        check_on_bad_file(on_bad_file)
        self.folder = _require_dir(Path(root).expanduser() / self.set_name, "benchmark set folder")
        if (self.folder / "HR").is_dir():
            hr_folder = self.folder / "HR"
            lr_root: Path | None = self.folder / "LR_bicubic"
        else:
            hr_folder, lr_root = self.folder, None
        hr_files = list_images(hr_folder)

        def lookup(p: Path) -> list[Path | None]:
            if lr_root is None:
                return [None] * len(self.factors)
            found = _div2k_lr_paths(lr_root, p, self.factors)
            return [c if c is not None and c.is_file() else None for c in found]

        cache_dir = Path(lr_cache_dir).expanduser() if lr_cache_dir else default_lr_cache_dir(hr_folder)
        self._images = _PyramidImages(
            hr_files, lookup, self.scale, self.scale, LRCache(cache_dir, self.scale),
            bool(cache_in_memory), on_bad_file, max_pixels, f"benchmark set {self.folder}",
        )

    @property
    def files(self) -> list[Path]:
        """HR files in use, in index order."""
        return [e.hr_path for e in self._images.entries]

    def __len__(self) -> int:
        """One sample per image."""
        return len(self._images)

    def __getitem__(self, index: int) -> Sample:
        """The whole mod-cropped HR image with its LR pyramid."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        hr, lrs = self._images.get(index)
        return {
            "lr": [to_tensor(lv) for lv in lrs],
            "hr": to_tensor(hr),
            "paired": torch.tensor(True),
            "name": self._images.entries[index].hr_path.name,
            "set": self.name,
        }

