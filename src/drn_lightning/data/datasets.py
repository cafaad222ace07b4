"""Folder-based SR datasets producing DRN's multi-level samples.

Every sample is a dict the training module consumes as is::

    {"lr": [coarsest, ..., finest LR]   # x4 -> [p/4, p/2], x8 -> [p/8, p/4, p/2], x2 -> [p/2]
     "hr": Tensor (3, p, p),            # float32, 0-255
     "paired": Tensor(bool),            # scalar; False = only lr[0] is real data
     "name": str}                       # source file name, for error messages

Unpaired samples carry zeros in place of the missing levels and HR, so PyTorch's default collate batches them with
paired ones. Benchmark samples are whole images (batch 1) and add ``"set": str``. A new dataset is any class
returning these dicts, referenced by ``_target_`` in a ``conf/data`` file. Folder arguments take a path, or a
callable returning one (the demo photos are written on first use).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from drn_lightning.checks import integer, one_of
from drn_lightning.data.io import list_images, read_image, read_image_size
from drn_lightning.data.pyramid import (
    FolderDataset,
    LRCache,
    PyramidDataset,
    SampleKey,
    augment_arrays,
    chw,
    default_lr_cache_dir,
    hwc,
    mod_crop,
    randint,
    random_flags,
    split_key,
    to_tensor,
)

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


def make_sample(lr: list[Tensor], hr: Tensor, paired: bool, name: str, **extra: Any) -> Sample:
    """The dict every dataset yields (see the module docstring)."""
    return {"lr": lr, "hr": hr, "paired": torch.tensor(paired), "name": name, **extra}


class _PatchDataset(FolderDataset):
    """What the training datasets share: patch size, augmentation, the epoch length and seeded sampling."""

    def _set_patch_options(self, patch_size: int, augment: bool, samples_per_epoch: int | None) -> None:
        """Validate the patch options (once the scale is known)."""
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % self.scale:
            raise ValueError(
                f"patch_size={patch_size!r} must be a positive multiple of scale={self.scale}, so every LR level gets "
                "a whole-pixel patch"
            )
        self.patch_size = patch_size
        self.augment = bool(augment)
        self.samples_per_epoch = (
            None if samples_per_epoch is None else integer(samples_per_epoch, "samples_per_epoch", 1)
        )

    def __len__(self) -> int:
        """Samples per epoch: ``samples_per_epoch`` or one per image."""
        return self.samples_per_epoch or self.num_images

    def __getitem__(self, key: int | SampleKey) -> Sample:
        """A random patch of image ``index % n``: from torch's global RNG, or for ``(index, seed)`` from that seed."""
        index, seed = split_key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        j, image = self._readable(index % self.num_images)
        return self._sample(image, self.files[j].name, None if seed is None else torch.Generator().manual_seed(seed))

    def _sample(self, image: Any, name: str, generator: torch.Generator | None) -> Sample:
        raise NotImplementedError


class PairedDataset(_PatchDataset, PyramidDataset):
    """Random aligned HR/LR-pyramid patches from a DIV2K/DF2K-style folder or an HR-only folder.

    With ``lr_dir``: LR level f is read from ``lr_dir/X{f}/{stem}x{f}.png``. Without it the pyramid is made once with
    ``lr_pyramid`` (MATLAB bicubic) and cached as PNGs under ``lr_cache_dir`` (default :func:`default_lr_cache_dir`).
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
        super().__init__(scale, on_bad_file, cache_in_memory, max_pixels)
        self._set_patch_options(patch_size, augment, samples_per_epoch)
        self.hr_dir = resolve_folder(hr_dir, "hr_dir")
        self.lr_dir = None if lr_dir is None else resolve_folder(lr_dir, "lr_dir")
        self.lr_cache = None
        if self.lr_dir is not None:
            for f in self.factors:
                resolve_folder(self.lr_dir / f"X{f}", f"lr_dir (x{f} level)")
        else:
            self.lr_cache = LRCache(lr_cache_dir or default_lr_cache_dir(self.hr_dir), self.scale)
        self._check_pyramids(list_images(self.hr_dir), self.lr_dir, True, self.patch_size, f"hr_dir {self.hr_dir}")

    def _sample(self, image: Any, name: str, generator: torch.Generator | None) -> Sample:
        """A random scale-aligned patch with its exact LR crops, identically augmented."""
        (hr, lrs), p, s = image, self.patch_size, self.scale
        y = s * randint((hr.shape[0] - p) // s + 1, generator)
        x = s * randint((hr.shape[1] - p) // s + 1, generator)
        crops = [lr[y // f : (y + p) // f, x // f : (x + p) // f] for lr, f in zip(lrs, self.factors, strict=True)]
        hr_patch, *lr_patches = augment_arrays(
            [hr[y : y + p, x : x + p], *crops], *random_flags(self.augment, generator)
        )
        return make_sample([to_tensor(a) for a in lr_patches], to_tensor(hr_patch), True, name)


def _degradation(degradation: str | Degradation) -> Degradation:
    """A registered degradation by name (`ops.degrade.DEGRADATIONS`), or any `(hr, scale) -> lr` callable."""
    from drn_lightning.ops.degrade import DEGRADATIONS

    if callable(degradation):
        return degradation
    return DEGRADATIONS[one_of(degradation, "degradation", sorted(DEGRADATIONS))]


class UnpairedDataset(_PatchDataset):
    """LR-only patches for DRN's unpaired (dual-regression-only) data.

    Give ``lr_dir`` (real LR images, cropped to ``patch_size / scale``) or ``hr_dir`` (each HR is mod-cropped, degraded
    once by ``degradation``, a ``DEGRADATIONS`` name or a ``(hr, scale) -> lr`` function, and only the LR kept).
    Samples have ``paired=False``; their finer LR levels and HR are zeros of the right shape.
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
        """Validate options and check (and by default decode) the LR images; HR images are always degraded up front."""
        super().__init__(scale, on_bad_file, cache_in_memory, max_pixels)
        self._set_patch_options(patch_size, augment, samples_per_epoch)
        if (lr_dir is None) == (hr_dir is None):
            raise ValueError(
                f"lr_dir={lr_dir!r}, hr_dir={hr_dir!r}: give exactly one of lr_dir (real LR images) or hr_dir "
                "(HR images to degrade)"
            )
        self.lr_patch = self.patch_size // self.scale
        self.from_hr = hr_dir is not None
        self.degradation = degradation
        self._degrade = _degradation(degradation) if self.from_hr else None
        self.cache_in_memory = self.cache_in_memory or self.from_hr
        option = "hr_dir" if self.from_hr else "lr_dir"
        self.source_dir = resolve_folder(hr_dir if self.from_hr else lr_dir, option)  # type: ignore[arg-type]
        self._check_files(list_images(self.source_dir), f"{option} {self.source_dir}")

    def _fits(self, path: Path) -> bool:
        """The LR image (for an HR file: its size once degraded), read from the header, must hold an LR patch."""
        h, w = read_image_size(path, self.max_pixels)
        if self.from_hr:
            h, w = h // self.scale, w // self.scale
        if h >= self.lr_patch and w >= self.lr_patch:
            return True
        need = self.patch_size if self.from_hr else self.lr_patch
        log.warning("skipping %s: too small for a %dx%d patch (LR size %dx%d WxH)", path, need, need, w, h)
        return False

    def _load(self, path: Path) -> np.ndarray:
        """Decode an LR file, or decode + mod-crop + degrade an HR file (uint8 in, uint8 out)."""
        image = read_image(path, self.max_pixels)
        if self._degrade is None:
            return image
        return hwc(self._degrade(chw(mod_crop(image, self.scale)), self.scale))

    def _sample(self, image: Any, name: str, generator: torch.Generator | None) -> Sample:
        """A random LR patch with zero placeholders for the levels and HR it does not have."""
        q = self.lr_patch
        y = randint(image.shape[0] - q + 1, generator)
        x = randint(image.shape[1] - q + 1, generator)
        (patch,) = augment_arrays([image[y : y + q, x : x + q]], *random_flags(self.augment, generator))
        placeholders = [torch.zeros(3, self.patch_size // f, self.patch_size // f) for f in self.factors[1:]]
        return make_sample(
            [to_tensor(patch), *placeholders], torch.zeros(3, self.patch_size, self.patch_size), False, name
        )


class BenchmarkDataset(PyramidDataset):
    """Whole-image evaluation set (Set5/Set14/B100/Urban100/Manga109/DIV2K-val or a photo folder).

    ``root/set_name`` holds either ``HR/`` (+ optional ``LR_bicubic/X{f}/{stem}x{f}.png``) or the HR images directly.
    HR is mod-cropped to ``scale``; LR levels come from the files when present (bicubic only), else from
    ``lr_pyramid`` with ``degradation`` on the uint8 HR (uint8 result like a stored PNG), cached on disk.
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
        """Find the set's HR (and LR) files and check their sizes; `images` (file names or stems, e.g. DIV2K's "0801")
        keeps those alone, in that order."""
        from drn_lightning.ops.degrade import DEGRADATIONS

        super().__init__(scale, on_bad_file, cache_in_memory, max_pixels)
        self.set_name = str(set_name)
        self.name = str(name) if name else self.set_name
        self.degradation = one_of(degradation, "degradation", sorted(DEGRADATIONS))
        self.folder = resolve_folder(resolve_folder(root, "root") / self.set_name, "set_name")
        hr_folder = self.folder / "HR" if (self.folder / "HR").is_dir() else self.folder
        lr_dir = self.folder / "LR_bicubic" if hr_folder != self.folder and degradation == "bicubic" else None
        files = list_images(hr_folder)
        if images is not None:
            by_name = {p.stem: p for p in files} | {p.name: p for p in files}
            missing = [str(name) for name in images if str(name) not in by_name]
            if missing:
                raise FileNotFoundError(f"images: {missing[:5]} not in {hr_folder}")
            files = [by_name[str(name)] for name in images]
        self.lr_cache = LRCache(lr_cache_dir or default_lr_cache_dir(hr_folder), self.scale, self.degradation)
        self._check_pyramids(files, lr_dir, False, self.scale, f"benchmark set {self.folder}")

    def __len__(self) -> int:
        """One sample per image."""
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        """The whole mod-cropped HR image with its LR pyramid."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        hr, lrs = self.load_full(index)
        return make_sample([to_tensor(lv) for lv in lrs], to_tensor(hr), True, self.files[index].name, set=self.name)
