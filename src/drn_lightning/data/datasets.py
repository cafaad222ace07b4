"""Folder SR datasets. A sample is this dict, which a dataset of your own returns too (benchmarks add "set": str):

{"lr": [coarsest, ..., finest LR],  # x4 -> sizes [p/4, p/2], x8 -> [p/8, p/4, p/2], x2 -> [p/2]
 "hr": Tensor (3, p, p),            # float32 0-255, as are the LR levels
 "paired": Tensor(bool),            # False: only lr[0] is real, the rest zeros so default collate batches them
 "name": str}                       # source file name, for error messages
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from drn_lightning.data.io import ON_BAD_FILE_CHOICES, ImageReadError, list_images, read_image, read_image_size
from drn_lightning.data.prepare import progress
from drn_lightning.data.pyramid import LRCache, chw, file_key, hwc, mod_crop, pyramid_factors, run_all
from drn_lightning.data.samplers import SampleKey, split_key
from drn_lightning.files import atomic_write, default_cache_dir
from drn_lightning.options import ExpectedError, OptionError, integer, one_of

log = logging.getLogger(__name__)

Sample = dict[str, Any]
Folder = str | os.PathLike[str] | Callable[[], str | os.PathLike[str]]  # a callable: a folder written on first use
# npy: decoding a 2K image's PNGs for one 384 patch costs ~110 ms; memory-mapped .npy files give 352 vs 8.5 samples/s
# per core (docs/performance.md, "Data loading for 2K images")
STORES = ("png", "npy")
DF2K_HINT = "for DF2K: 'drn-sr data fetch div2k --root DIR', the same for flickr2k, then 'drn-sr data df2k --root DIR'"


class DataError(ExpectedError, ValueError):
    """A data folder that cannot be used as it is: a file missing, LR/HR sizes that disagree, no usable image."""

    exit_code = 2  # invalid data, like an invalid option: nothing was started


class MissingFolder(OptionError):
    """A folder option naming no folder; the DataModule leaves a validation set out over it, with a warning."""


def checked_folder(value: Folder | None, name: str, hint: str = "") -> Folder | None:
    """The option as given, once a path names a folder (a callable provides its folder in setup); else MissingFolder."""
    path = None if value is None or callable(value) else Path(value).expanduser()
    if path is not None and not path.is_dir():
        reason = "is not a folder" if path.exists() else "does not exist"
        raise MissingFolder(name, value, f"{reason}; {hint}" if hint else reason)
    return value


def _path(value: Folder) -> Path:
    return Path(value() if callable(value) else value).expanduser()


def _images(folder: Path) -> list[Path]:
    """`list_images`; a missing or empty folder is a DataError naming it."""
    try:
        return list_images(folder)
    except (OSError, ValueError) as err:
        raise DataError(str(err)) from None


def _flipped(arrays: list[np.ndarray], augment: bool, rng: torch.Generator | None) -> list[Tensor]:
    """One random h-flip/v-flip/transpose applied to every level alike, so they stay aligned; float32 0-255 tensors."""
    h, v, t = (torch.rand(3, generator=rng) < 0.5).tolist() if augment else (False, False, False)
    flipped = [a[:: -1 if v else 1, :: -1 if h else 1] for a in arrays]
    return [chw(a.transpose(1, 0, 2) if t else a).to(torch.float32) for a in flipped]


def _lr_size(lr: tuple[int, int], hr: tuple[int, int], f: int, s: int, lr_path: Path, hr_path: Path) -> tuple[int, int]:
    """An LR file must cover HR/f after the mod-crop and not exceed ceil(HR/f); returns the size to crop it to."""
    (h, w), (hm, wm) = hr, (hr[0] - hr[0] % s, hr[1] - hr[1] % s)
    need, most = (hm // f, wm // f), (math.ceil(h / f), math.ceil(w / f))
    if not (need[0] <= lr[0] <= most[0] and need[1] <= lr[1] <= most[1]):
        raise DataError(
            f"LR/HR size mismatch: LR file {lr_path} is {lr[1]}x{lr[0]} (WxH) but HR file {hr_path} is {w}x{h} "
            f"({wm}x{hm} after cropping to a multiple of scale {s}), so its x{f} level must be "
            f"{need[1]}x{need[0]} (up to {most[1]}x{most[0]})"
        )
    return need


class _FolderDataset(Dataset[Sample]):
    """The datasets' shared part: options checked on construction, files by setup() (on first use), prepare()."""

    samples_per_epoch: int | None = None

    def __init__(
        self,
        scale: int,
        on_bad_file: str = "raise",
        cache_in_memory: bool = True,
        max_pixels: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        store: str = "png",
        method: str = "bicubic",
    ) -> None:
        """on_bad_file='skip' leaves unreadable images out with a warning; max_pixels bounds decompression bombs."""
        self.factors, self.scale = pyramid_factors(scale), int(scale)
        self.on_bad_file = one_of(on_bad_file, "on_bad_file", ON_BAD_FILE_CHOICES)
        self.cache_in_memory = bool(cache_in_memory)  # decode every image at setup
        self.max_pixels = None if max_pixels is None else integer(max_pixels, "max_pixels", 1)
        self.cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        self.store = one_of(store, "store", STORES)
        self.lr_cache = LRCache(self.cache_dir / "lr_cache", self.scale, method)
        self.min_size, self.what = self.scale, ""
        self.files: list[Path] = []
        self.lr_files: dict[Path, dict[int, Path]] = {}  # the levels an LR file provides, per HR file
        self._memory: list[Any] = []
        self._bad: set[int] = set()
        self._ready = False

    def _patch_options(self, patch_size: int, augment: bool, samples_per_epoch: int | None) -> None:
        """Check the training datasets' patch options."""
        self.patch_size, self.augment = integer(patch_size, "patch_size", self.scale), bool(augment)
        if self.patch_size % self.scale:
            raise OptionError("patch_size", patch_size, f"must be a positive multiple of scale={self.scale}")
        epoch = samples_per_epoch
        self.samples_per_epoch = None if epoch is None else integer(epoch, "samples_per_epoch", 1)

    def _list(self) -> list[Path]:
        """The files to check (filling `lr_files`, `what`)."""
        raise NotImplementedError

    def _skip(self, path: Path, error: Exception) -> None:
        """Raise `error` (on_bad_file='raise'), or warn that the image is left out."""
        if self.on_bad_file == "raise":
            raise error
        log.warning("skipping unreadable image %s: %s", path, error)

    def _each(self, files: list[Path], fn: Callable[[Path], Any]) -> list[tuple[Path, Any]]:
        """(file, fn(file)) for each file fn does not reject (False) and can read (else on_bad_file decides)."""
        kept = []
        with progress(f"{self.what}: reading", len(files), "images", emit=log.info) as advance:
            for path in files:
                advance(1)
                try:
                    result = fn(path)
                except (ImageReadError, OSError) as exc:
                    self._skip(path, exc)
                    continue
                if result is not False:
                    kept.append((path, result))
        if not kept:
            raise DataError(f"{self.what}: no usable images ({len(files)} unreadable or too small): "
                            f"{[p.name for p in files][:10]}")  # fmt: skip
        return kept

    def _scan(self) -> None:
        """List the files and check their headers, once."""
        if not self.files:
            self.files = [path for path, _ in self._each(self._list(), self._fits)]

    def setup(self) -> None:
        """List and check the files (headers only); with cache_in_memory also decode them. Idempotent."""
        if not self._ready:
            self._scan()
            if self.cache_in_memory:
                kept = self._each(self.files, self._load)
                self.files, self._memory = [p for p, _ in kept], [a for _, a in kept]
            self._ready = True

    def __len__(self) -> int:
        """Samples per epoch: ``samples_per_epoch``, else one per image."""
        self.setup()
        return self.samples_per_epoch or len(self.files)

    def _sample(self, key: int | SampleKey) -> tuple[str, Any, torch.Generator | None]:
        """(name, arrays, generator) of sample `key`; an `(index, seed)` key seeds the generator, else torch's RNG."""
        index, seed = split_key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return *self.image(index), None if seed is None else torch.Generator().manual_seed(seed)

    def image(self, index: int) -> tuple[str, Any]:
        """(name, arrays) of image `index` (modulo the count), or under on_bad_file='skip' the next readable one."""
        self.setup()
        n = len(self.files)
        for j in (k % n for k in range(index, index + n)):
            if j not in self._bad:
                try:
                    return self.files[j].name, self._memory[j] if self._memory else self._load(self.files[j])
                except (ImageReadError, OSError) as exc:
                    self._skip(self.files[j], exc)
                    self._bad.add(j)  # warned once
        raise ImageReadError(f"{self.files[0].parent}: no readable image left")

    def _fits(self, path: Path) -> bool:
        """Header checks (an LR/HR size mismatch raises); the mod-cropped HR must hold a min_size patch."""
        h, w = read_image_size(path, self.max_pixels)
        for f, lr_path in self.lr_files[path].items():
            _lr_size(read_image_size(lr_path, self.max_pixels), (h, w), f, self.scale, lr_path, path)
        h, w, m = h - h % self.scale, w - w % self.scale, self.min_size
        if h >= m and w >= m:
            return True
        log.warning("skipping %s: %dx%d (WxH, mod-cropped) is smaller than the %dx%d patch needed", path, w, h, m, m)
        return False

    def _npy_paths(self, path: Path) -> list[Path]:
        """Store files of one image, HR then the levels: keyed by the HR and LR files it is made from."""
        key = file_key([path, *self.lr_files[path].values()], f"x{self.scale}", self.lr_cache.method)
        tags = ["hr", *(f"x{f}" for f in self.factors)]
        return [self.cache_dir / "npy_store" / f"{path.stem}__{key}_{tag}.npy" for tag in tags]

    def _load(self, path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
        """Mod-cropped HR and LR levels: memory-mapped from the npy store (written on first use), else decoded."""
        paths = self._npy_paths(path) if self.store == "npy" else []
        if paths and all(p.is_file() for p in paths):
            hr, *lrs = (np.load(p, mmap_mode="r") for p in paths)  # no decoding; pages shared through the OS cache
            return hr, lrs
        full = read_image(path, self.max_pixels)
        hr, levels = mod_crop(full, self.scale), {}
        for f, lr_path in self.lr_files[path].items():  # LR files cropped to HR/f; the levels they lack from the cache
            lr = read_image(lr_path, self.max_pixels)
            h, w = _lr_size(lr.shape[:2], full.shape[:2], f, self.scale, lr_path, path)
            levels[f] = np.ascontiguousarray(lr[:h, :w])
        if missing := [f for f in self.factors if f not in levels]:
            levels |= dict(zip(missing, self.lr_cache.get(path, hr, missing, self.max_pixels), strict=True))
        lrs = [levels[f] for f in self.factors]
        for p, array in zip(paths, [hr, *lrs]):
            atomic_write(p, partial(np.save, arr=array))
        return hr, lrs

    def _todo(self, path: Path) -> bool:
        """Whether `prepare` has anything to write for this image: its npy store entry, or levels it has no file for."""
        missing = [f for f in self.factors if f not in self.lr_files[path]]
        entry = self._npy_paths(path) if self.store == "npy" else self.lr_cache.paths(path, missing)
        return not all(p.is_file() for p in entry)

    def prepare(self) -> None:
        """Write what the images lack on disk (LR levels, the npy store) once, on worker processes, with progress."""
        try:
            self._scan()
        except (ExpectedError, OSError):  # raised by setup() on every rank alike, not on this one alone
            return
        todo = [p for p in self.files if self._todo(p)]
        if not todo:
            return
        method = "MATLAB bicubic" if self.lr_cache.method == "bicubic" else self.lr_cache.method
        made = [f"the npy store in {self.cache_dir / 'npy_store'}"] if self.store == "npy" else []
        if levels := ", ".join(f"x{f}" for f in self.factors if any(f not in self.lr_files[p] for p in todo)):
            made.append(f"LR levels {levels} (no LR files) made from the HR with {method} in {self.lr_cache.cache_dir}")
        log.info("%s: writing %s for %d images, once", self.what, " and ".join(made), len(todo))
        for path, error in zip(todo, run_all(todo, self._load, self.what), strict=True):
            if error:
                self._skip(path, ImageReadError(error))


class PairedDataset(_FolderDataset):
    """Random aligned HR/LR-pyramid patches; LR level f from ``lr_dir/X{f}/{stem}x{f}.png``, else made from the HR."""

    def __init__(
        self,
        hr_dir: Folder,
        scale: int,
        patch_size: int,
        lr_dir: Folder | None = None,
        store: str = "png",
        augment: bool = True,
        samples_per_epoch: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(scale, store=store, **common)
        self._patch_options(patch_size, augment, samples_per_epoch)
        self.hr_dir = checked_folder(hr_dir, "hr_dir", DF2K_HINT)
        self.lr_dir = checked_folder(lr_dir, "lr_dir")
        self.min_size = self.patch_size

    def _list(self) -> list[Path]:
        """The HR files; each has an LR file in every X{f} folder lr_dir holds (DIV2K ships no X8)."""
        hr_dir = _path(self.hr_dir)  # type: ignore[arg-type]
        lr_dir = None if self.lr_dir is None else _path(self.lr_dir)
        levels = {f: lr_dir / f"X{f}" for f in self.factors if lr_dir is not None and (lr_dir / f"X{f}").is_dir()}
        self.what, files = f"hr_dir {hr_dir}", _images(hr_dir)
        for hr in files:
            self.lr_files[hr] = {f: folder / f"{hr.stem}x{f}.png" for f, folder in levels.items()}
            if absent := [p for p in self.lr_files[hr].values() if not p.is_file()]:
                raise DataError(f"LR file {absent[0]} for HR file {hr} does not exist")
        return files

    def __getitem__(self, key: int | SampleKey) -> Sample:
        """A random scale-aligned HR patch and the LR crops under it, flipped alike; an `(index, seed)` key fixes it."""
        name, (hr, lrs), rng = self._sample(key)
        p, s = self.patch_size, self.scale
        y, x = (s * int(torch.randint((n - p) // s + 1, (1,), generator=rng)) for n in hr.shape[:2])
        crops = [lr[y // f : (y + p) // f, x // f : (x + p) // f] for lr, f in zip(lrs, self.factors, strict=True)]
        hr_patch, *lr_patches = _flipped([hr[y : y + p, x : x + p], *crops], self.augment, rng)
        return {"lr": lr_patches, "hr": hr_patch, "paired": torch.tensor(True), "name": name}


class UnpairedDataset(_FolderDataset):
    """LR-only patches (``paired=False``) for DRN's dual regression: from real LR images, or HR degraded at setup."""

    def __init__(
        self,
        scale: int,
        patch_size: int,
        lr_dir: Folder | None = None,
        hr_dir: Folder | None = None,
        degradation: str | Callable[[Tensor, int], Tensor] = "nearest",
        augment: bool = True,
        samples_per_epoch: int | None = None,
        cache_in_memory: bool = True,
        **common: Any,
    ) -> None:
        """`degradation`, for hr_dir: a ``DEGRADATIONS`` name or an ``(hr, scale) -> lr`` function (uint8 in, out)."""
        super().__init__(scale, cache_in_memory=cache_in_memory or hr_dir is not None, **common)
        self._patch_options(patch_size, augment, samples_per_epoch)
        if (lr_dir is None) == (hr_dir is None):
            raise OptionError("lr_dir", lr_dir, f"give exactly one of lr_dir (real LR images) or hr_dir (HR images to "
                              f"degrade); hr_dir={hr_dir!r}")  # fmt: skip
        from drn_lightning.ops.degrade import DEGRADATIONS

        self.from_hr, self.degradation, self.lr_patch = hr_dir is not None, degradation, self.patch_size // self.scale
        self._degrade: Callable[[Tensor, int], Tensor] | None = None
        if self.from_hr:
            named = degradation if callable(degradation) else one_of(degradation, "degradation", sorted(DEGRADATIONS))
            self._degrade = named if callable(named) else DEGRADATIONS[named]
        self.option = "hr_dir" if self.from_hr else "lr_dir"
        self.source_dir = checked_folder(hr_dir if self.from_hr else lr_dir, self.option)

    def _list(self) -> list[Path]:
        folder = _path(self.source_dir)  # type: ignore[arg-type]
        self.what = f"{self.option} {folder}"
        return _images(folder)

    def prepare(self) -> None:
        """Nothing to write: HR images are degraded in memory at setup."""

    def _fits(self, path: Path) -> bool:
        """The LR image (for an HR file: its size once degraded), read from the header, must hold an LR patch."""
        h, w = read_image_size(path, self.max_pixels)
        h, w = (h // self.scale, w // self.scale) if self.from_hr else (h, w)
        if h >= self.lr_patch and w >= self.lr_patch:
            return True
        need = self.patch_size if self.from_hr else self.lr_patch
        log.warning("skipping %s: too small for a %dx%d patch (LR size %dx%d WxH)", path, need, need, w, h)
        return False

    def _load(self, path: Path) -> np.ndarray:  # type: ignore[override]
        """Decode an LR file, or decode + mod-crop + degrade an HR file (only the LR is kept)."""
        image = read_image(path, self.max_pixels)
        return image if self._degrade is None else hwc(self._degrade(chw(mod_crop(image, self.scale)), self.scale))

    def __getitem__(self, key: int | SampleKey) -> Sample:
        """A random LR patch with zero placeholders for the levels and HR it lacks; an `(index, seed)` key fixes it."""
        name, image, rng = self._sample(key)
        q, p = self.lr_patch, self.patch_size
        y, x = (int(torch.randint(n - q + 1, (1,), generator=rng)) for n in image.shape[:2])
        (patch,) = _flipped([image[y : y + q, x : x + q]], self.augment, rng)
        zeros = [torch.zeros(3, p // f, p // f) for f in self.factors[1:]]
        return {"lr": [patch, *zeros], "hr": torch.zeros(3, p, p), "paired": torch.tensor(False), "name": name}


class BenchmarkDataset(_FolderDataset):
    """Whole images of ``root/set_name`` (its ``HR/`` + optional ``LR_bicubic/X{f}``, or the images directly)."""

    def __init__(
        self,
        root: Folder,
        set_name: str,
        scale: int,
        name: str | None = None,
        degradation: str = "bicubic",
        images: list[str] | None = None,
        **common: Any,
    ) -> None:
        """`images` (file names or stems, e.g. DIV2K's "0801") keeps those alone; a missing folder raises in setup()."""
        from drn_lightning.ops.degrade import DEGRADATIONS

        self.degradation = one_of(degradation, "degradation", sorted(DEGRADATIONS))
        super().__init__(scale, method=self.degradation, **common)
        self.root, self.set_name, self.name = root, str(set_name), str(name) if name else str(set_name)
        self.images = None if images is None else [str(i) for i in images]

    def _list(self) -> list[Path]:
        """The set's HR files (those of `images`), each with the LR_bicubic files it has; other levels from the HR."""
        root = _path(checked_folder(self.root, "root"))  # type: ignore[arg-type]
        folder = root / self.set_name
        if not folder.is_dir():
            raise MissingFolder("set_name", self.set_name, f"{folder} does not exist")
        hr_dir = folder / "HR" if (folder / "HR").is_dir() else folder
        lr_dir = folder / "LR_bicubic" if hr_dir != folder and self.degradation == "bicubic" else None
        self.what, files = f"benchmark set {folder}", _images(hr_dir)
        if self.images is not None:
            by_name = {p.stem: p for p in files} | {p.name: p for p in files}
            if missing := [name for name in self.images if name not in by_name]:
                raise OptionError("images", self.images, f"{missing[:5]} not in {hr_dir}")
            files = [by_name[name] for name in self.images]
        for hr in files:
            found = {f: lr_dir / f"X{f}" / f"{hr.stem}x{f}.png" for f in self.factors} if lr_dir else {}
            self.lr_files[hr] = {f: p for f, p in found.items() if p.is_file()}
        return files

    def __getitem__(self, index: int) -> Sample:
        """The whole mod-cropped HR image with its LR pyramid."""
        name, (hr, lrs), _ = self._sample(index)
        tensors = [chw(a).to(torch.float32) for a in (hr, *lrs)]
        return {"lr": tensors[1:], "hr": tensors[0], "paired": torch.tensor(True), "name": name, "set": self.name}
