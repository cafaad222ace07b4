"""Folder-based SR datasets producing DRN's multi-level samples.

Every sample is a dict the training module consumes as is::

    {"lr": [coarsest, ..., finest LR]   # x4 -> [p/4, p/2], x8 -> [p/8, p/4, p/2], x2 -> [p/2]
     "hr": Tensor (3, p, p),            # float32, 0-255
     "paired": Tensor(bool),            # scalar; False = only lr[0] is real data
     "name": str}                       # source file name, for error messages

Unpaired samples carry zero tensors of the right shapes in place of the missing levels and HR,
so paired and unpaired samples go through PyTorch's default collate into one batch. Benchmark
samples are whole images (batch 1) and add ``"set": str``. A new dataset is any class returning
these dicts, referenced by ``_target_`` in a ``conf/data`` file.

Folder arguments take a path, or a callable returning one (the demo photos are written on first use).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from drn_lightning.checks import integer, one_of
from drn_lightning.data.io import ON_BAD_FILE_CHOICES, list_images, read_image, read_image_size
from drn_lightning.data.pyramid import (
    LRCache,
    PyramidImages,
    SampleKey,
    admit,
    augment_arrays,
    crop_pyramid,
    default_lr_cache_dir,
    div2k_lr_paths,
    load_readable,
    mod_crop,
    pyramid_factors,
    randint,
    random_flags,
    split_key,
    to_tensor,
)

__all__ = ["BenchmarkDataset", "Folder", "PairedDataset", "UnpairedDataset", "resolve_folder"]

log = logging.getLogger(__name__)

Sample = dict[str, Any]
Folder = str | os.PathLike[str] | Callable[[], str | os.PathLike[str]]
Degradation = Callable[[Tensor, int], Tensor]


def resolve_folder(value: Folder, option: str) -> Path:
    """A folder that must exist now; a callable is first asked to provide it. The error names the option."""
    path = Path(value() if callable(value) else value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{option}: {path} {'is not a folder' if path.exists() else 'does not exist'}")
    return path


def _no_lr_files(hr_path: Path, levels: int) -> list[Path | None]:
    return [None] * levels


class _PatchDataset(Dataset[Sample]):
    """What the training datasets share: scale, patch size, augmentation and the epoch length."""

    def _set_patch_options(self, scale: int, patch_size: int, augment: bool, samples_per_epoch: int | None) -> None:
        self.factors = pyramid_factors(scale)
        self.scale = int(scale)
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % scale:
            raise ValueError(
                f"patch_size={patch_size!r} must be a positive multiple of scale={scale}, so every LR level gets "
                "a whole-pixel patch"
            )
        self.patch_size = patch_size
        self.augment = bool(augment)
        self.samples_per_epoch = (
            None if samples_per_epoch is None else integer(samples_per_epoch, "samples_per_epoch", 1)
        )

    @property
    def num_images(self) -> int:
        """Number of usable images."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Samples per epoch: ``samples_per_epoch`` or one per image."""
        return self.samples_per_epoch or self.num_images

    def __getitem__(self, key: int | SampleKey) -> Sample:
        """A random patch: from torch's global RNG for an index, from the key's own seed for ``(index, seed)``."""
        index, seed = split_key(key)
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
        hr_dir: Folder,
        scale: int,
        patch_size: int,
        lr_dir: Folder | None = None,
        lr_cache_dir: str | os.PathLike[str] | None = None,
        augment: bool = True,
        samples_per_epoch: int | None = None,
        on_bad_file: str = "raise",
        cache_in_memory: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        """Validate options, list and check the files, and (by default) decode them into memory."""
        self._set_patch_options(scale, patch_size, augment, samples_per_epoch)
        self.on_bad_file = one_of(on_bad_file, "on_bad_file", ON_BAD_FILE_CHOICES)
        self.hr_dir = resolve_folder(hr_dir, "hr_dir")
        self.lr_dir = None if lr_dir is None else resolve_folder(lr_dir, "lr_dir")
        self.lr_cache: LRCache | None = None
        if self.lr_dir is not None:
            for f in self.factors:
                resolve_folder(self.lr_dir / f"X{f}", f"lr_dir (x{f} level)")
            lookup: Callable[[Path], list[Path | None]] = partial(div2k_lr_paths, self.lr_dir, factors=self.factors)
        else:
            self.lr_cache = LRCache(
                Path(lr_cache_dir) if lr_cache_dir else default_lr_cache_dir(self.hr_dir), self.scale
            )
            lookup = partial(_no_lr_files, levels=len(self.factors))  # every level made from the HR

        self._images = PyramidImages(
            list_images(self.hr_dir),
            lookup,
            self.scale,
            self.patch_size,
            self.lr_cache,
            bool(cache_in_memory),
            self.on_bad_file,
            max_pixels,
            f"hr_dir {self.hr_dir}",
        )
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

    def _sample(self, index: int, generator: torch.Generator | None) -> Sample:
        """A random scale-aligned patch with its exact LR crops, identically augmented."""
        # Under on_bad_file='skip' a file that breaks only when decoded lazily is replaced by the next one.
        j, (hr, lrs) = load_readable(
            index % len(self._images),
            len(self._images),
            self._images.get,
            lambda k: self._images.entries[k].hr_path,
            self.on_bad_file,
            self._bad,
            self.hr_dir,
        )
        p, s = self.patch_size, self.scale
        y = s * randint((hr.shape[0] - p) // s + 1, generator)
        x = s * randint((hr.shape[1] - p) // s + 1, generator)
        hr_patch, lr_patches = crop_pyramid(hr, lrs, self.factors, p, y, x)
        assert hr_patch is not None
        arrays = augment_arrays([hr_patch, *lr_patches], *random_flags(self.augment, generator))
        return {
            "lr": [to_tensor(a) for a in arrays[1:]],
            "hr": to_tensor(arrays[0]),
            "paired": torch.tensor(True),
            "name": self._images.entries[j].hr_path.name,
        }


def _degradation(degradation: str | Degradation) -> Degradation:
    """A registered degradation by name (`ops.degrade.DEGRADATIONS`), or any `(hr, scale) -> lr` callable."""
    from drn_lightning.ops.degrade import DEGRADATIONS

    if callable(degradation):
        return degradation
    return DEGRADATIONS[one_of(degradation, "degradation", sorted(DEGRADATIONS))]


class UnpairedDataset(_PatchDataset):
    """LR-only patches for DRN's unpaired (dual-regression-only) data.

    Give ``lr_dir`` (real LR images, cropped to ``patch_size / scale``) or ``hr_dir`` (each HR is
    mod-cropped, degraded once by ``degradation`` and only the LR kept): a name from ``DEGRADATIONS``
    or a ``(hr, scale) -> lr`` function. Samples have ``paired=False``; their finer LR levels and HR are
    zeros of the right shape.
    """

    def __init__(
        self,
        scale: int,
        patch_size: int,
        lr_dir: Folder | None = None,
        hr_dir: Folder | None = None,
        degradation: str | Degradation = "nearest",
        augment: bool = True,
        samples_per_epoch: int | None = None,
        on_bad_file: str = "raise",
        cache_in_memory: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        """Validate options and load (or list) the LR images."""
        self._set_patch_options(scale, patch_size, augment, samples_per_epoch)
        self.lr_patch = self.patch_size // self.scale
        self.on_bad_file = one_of(on_bad_file, "on_bad_file", ON_BAD_FILE_CHOICES)
        self.max_pixels = max_pixels
        if (lr_dir is None) == (hr_dir is None):
            raise ValueError(
                f"lr_dir={lr_dir!r}, hr_dir={hr_dir!r}: give exactly one of lr_dir (real LR images) or hr_dir "
                "(HR images to degrade)"
            )
        self.from_hr = hr_dir is not None
        self.degradation = degradation
        self._degrade = _degradation(degradation) if self.from_hr else None
        self.cache_in_memory = bool(cache_in_memory) or self.from_hr
        option = "hr_dir" if self.from_hr else "lr_dir"
        self.source_dir = resolve_folder(hr_dir if self.from_hr else lr_dir, option)  # type: ignore[arg-type]
        self.files: list[Path] = []
        self.skipped: list[Path] = []
        self._bad: set[int] = set()
        self._memory: list[np.ndarray] = []
        for path in list_images(self.source_dir):
            if admit(path, partial(self._accept, path), self.on_bad_file, self.skipped):
                self.files.append(path)
        if not self.files:
            raise ValueError(
                f"{option} {self.source_dir}: no usable images left ({len(self.skipped)} skipped): "
                f"{[p.name for p in self.skipped][:10]}"
            )

    def _accept(self, path: Path) -> bool:
        """Size check from the header (the LR size after degrading, for HR files), then decode when caching."""
        h, w = read_image_size(path, self.max_pixels)
        if self.from_hr:
            h, w = h // self.scale, w // self.scale  # LR size after mod-crop + degrade
        if h < self.lr_patch or w < self.lr_patch:
            need = self.patch_size if self.from_hr else self.lr_patch
            log.warning("skipping %s: too small for a %dx%d patch (LR size %dx%d WxH)", path, need, need, w, h)
            return False
        if self.cache_in_memory:
            self._memory.append(self._load(path))
        return True

    def _load(self, path: Path) -> np.ndarray:
        """Decode an LR file, or decode + mod-crop + degrade an HR file (uint8 in, uint8 out)."""
        image = read_image(path, self.max_pixels)
        if self._degrade is None:
            return image
        hr = mod_crop(image, self.scale)
        lr = self._degrade(torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))), self.scale)
        return np.ascontiguousarray(lr.to(torch.uint8).permute(1, 2, 0).numpy())

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
        j, lr = load_readable(
            index % len(self.files),
            len(self.files),
            self.load_full,
            self.files.__getitem__,
            self.on_bad_file,
            self._bad,
            self.source_dir,
        )
        q = self.lr_patch
        y = randint(lr.shape[0] - q + 1, generator)
        x = randint(lr.shape[1] - q + 1, generator)
        (patch,) = augment_arrays([lr[y : y + q, x : x + q]], *random_flags(self.augment, generator))
        placeholders = [torch.zeros(3, self.patch_size // f, self.patch_size // f) for f in self.factors[1:]]
        return {
            "lr": [to_tensor(patch), *placeholders],
            "hr": torch.zeros(3, self.patch_size, self.patch_size),
            "paired": torch.tensor(False),
            "name": self.files[j].name,
        }


class BenchmarkDataset(Dataset[Sample]):
    """Whole-image evaluation set (Set5/Set14/B100/Urban100/Manga109/DIV2K-val or a photo folder).

    ``root/set_name`` holds either ``HR/`` (+ optional ``LR_bicubic/X{f}/{stem}x{f}.png``) or the HR
    images directly. HR is mod-cropped to ``scale``; LR levels come from the files when present (bicubic
    only), else from ``lr_pyramid`` with ``degradation`` on the uint8 HR (uint8 result like a stored PNG),
    cached on disk.
    """

    def __init__(
        self,
        root: Folder,
        set_name: str,
        scale: int,
        name: str | None = None,
        degradation: str = "bicubic",
        lr_cache_dir: str | os.PathLike[str] | None = None,
        cache_in_memory: bool = True,
        on_bad_file: str = "raise",
        max_pixels: int | None = None,
        images: list[str] | None = None,
    ) -> None:
        """Find the HR (and LR) files of the set and validate their sizes; `images` (file names or stems, e.g.
        DIV2K's "0801".."0810") keeps those alone, in that order."""
        from drn_lightning.ops.degrade import DEGRADATIONS

        self.factors = pyramid_factors(scale)
        self.scale = int(scale)
        self.set_name = str(set_name)
        self.name = str(name) if name else self.set_name
        self.degradation = one_of(degradation, "degradation", sorted(DEGRADATIONS))
        one_of(on_bad_file, "on_bad_file", ON_BAD_FILE_CHOICES)
        self.folder = resolve_folder(resolve_folder(root, "root") / self.set_name, "set_name")
        hr_folder = self.folder / "HR" if (self.folder / "HR").is_dir() else self.folder
        lr_root = self.folder / "LR_bicubic" if hr_folder != self.folder and degradation == "bicubic" else None

        def lookup(p: Path) -> list[Path | None]:
            if lr_root is None:
                return [None] * len(self.factors)
            return [c if c is not None and c.is_file() else None for c in div2k_lr_paths(lr_root, p, self.factors)]

        cache_dir = Path(lr_cache_dir).expanduser() if lr_cache_dir else default_lr_cache_dir(hr_folder)
        files = list_images(hr_folder)
        if images is not None:
            by_name = {p.stem: p for p in files} | {p.name: p for p in files}
            missing = [str(name) for name in images if str(name) not in by_name]
            if missing:
                raise FileNotFoundError(f"images: {missing[:5]} not in {hr_folder}")
            files = [by_name[str(name)] for name in images]
        self._images = PyramidImages(
            files,
            lookup,
            self.scale,
            self.scale,
            LRCache(cache_dir, self.scale, self.degradation),
            bool(cache_in_memory),
            on_bad_file,
            max_pixels,
            f"benchmark set {self.folder}",
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
