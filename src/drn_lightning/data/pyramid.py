"""What the SR datasets share: LR-pyramid geometry, aligned flips, the on-disk LR cache, and the checked files.

LR level k has factor f = scale / 2**k: the HR patch at (y, x) of size p (y, x multiples of scale) corresponds
exactly to the LR crop at (y / f, x / f) of size p / f at that level.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from drn_lightning.checks import integer, one_of
from drn_lightning.data.io import ON_BAD_FILE_CHOICES, ImageReadError, read_image, read_image_size
from drn_lightning.files import atomic_write

log = logging.getLogger(__name__)

SampleKey = tuple[int, int]
_CACHE_VERSION = "1"


def pyramid_factors(scale: int) -> list[int]:
    """Downscale factors of DRN's LR levels, coarse to fine (x8 -> [8, 4, 2]): one per x2 block."""
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 2 or scale & (scale - 1):
        raise ValueError(f"scale must be a power of two >= 2 (2, 4, 8, ...), got {scale!r}")
    return [int(scale) >> k for k in range(int(math.log2(scale)))]


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so H and W are multiples of scale, as the SR benchmarks do."""
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]


def augment_arrays(arrays: Sequence[np.ndarray], hflip: bool, vflip: bool, transpose: bool) -> list[np.ndarray]:
    """Apply one dihedral transform to all levels alike, so LR and HR patches stay aligned."""
    out = []
    for a in arrays:
        a = a[:, ::-1] if hflip else a
        a = a[::-1] if vflip else a
        out.append(a.transpose(1, 0, 2) if transpose else a)
    return out


def chw(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor, as the degradations take it."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def hwc(image: Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) uint8 array, like a stored PNG."""
    return np.ascontiguousarray(image.to(torch.uint8).permute(1, 2, 0).numpy())


def to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in 0-255, the range the models work in."""
    return chw(image).to(torch.float32)


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


def default_lr_cache_dir(hr_dir: str | os.PathLike[str]) -> Path:
    """``<hr_dir parent>/.drn_cache/<hr_dir name>`` when writable, else a per-user cache folder."""
    hr_dir = Path(hr_dir).expanduser().resolve()
    beside = hr_dir.parent / ".drn_cache" / hr_dir.name
    try:
        beside.mkdir(parents=True, exist_ok=True)
        if os.access(beside, os.W_OK | os.X_OK):
            return beside
    except OSError:
        pass
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha1(os.fsencode(hr_dir)).hexdigest()[:12]
    return base / "drn_lightning" / "lr_cache" / f"{hr_dir.name}-{digest}"


def _save_png(image: np.ndarray, handle: IO[bytes]) -> None:
    Image.fromarray(image).save(handle, format="PNG", compress_level=1)


class LRCache:
    """Disk cache of LR pyramids made with ``lr_pyramid``, keyed by HR path, size and mtime: a changed HR file gets
    a new entry (old ones are orphaned; the folder is safe to delete), and atomic writes let ranks share it."""

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
            for level, path in zip(levels, paths, strict=True):
                atomic_write(path, partial(_save_png, level))
        except OSError as exc:
            log.warning("could not write LR cache %s (%s); continuing without it", self.cache_dir, exc)
        return levels

    def make(self, hr: np.ndarray) -> list[np.ndarray]:
        """Compute the pyramid from a uint8 HR array (uint8 in -> uint8 out, like stored PNGs)."""
        from drn_lightning.ops.degrade import lr_pyramid

        return [hwc(lv) for lv in lr_pyramid(chw(hr), self.scale, method=self.method)]


class FolderDataset(Dataset[dict[str, Any]]):
    """What the folder datasets share: the scale's LR levels and the files that passed their checks, decoded on
    demand or once into memory. An unreadable file raises, or under on_bad_file='skip' is left out with a warning
    (one found only when decoded lazily is routed around)."""

    def __init__(self, scale: int, on_bad_file: str, cache_in_memory: bool, max_pixels: int | None) -> None:
        """Validate the options every folder dataset takes."""
        self.factors = pyramid_factors(scale)
        self.scale = int(scale)
        self.on_bad_file = one_of(on_bad_file, "on_bad_file", ON_BAD_FILE_CHOICES)
        self.cache_in_memory = bool(cache_in_memory)
        self.max_pixels = None if max_pixels is None else integer(max_pixels, "max_pixels", 1)
        self.files: list[Path] = []
        self._memory: list[Any] = []
        self._bad: set[int] = set()

    def _fits(self, path: Path) -> bool:
        """Header checks of one file; False = too small for a sample (already warned about)."""
        raise NotImplementedError

    def _load(self, path: Path) -> Any:
        """Decode one file into the arrays its samples are cut from."""
        raise NotImplementedError

    def _check_files(self, files: Sequence[Path], what: str) -> None:
        """Keep the files that pass `_fits` (in `files`), decoding them now when caching in memory."""
        skipped: list[Path] = []
        for path in files:
            try:
                if self._fits(path):
                    if self.cache_in_memory:
                        self._memory.append(self._load(path))
                    self.files.append(path)
                    continue
            except (ImageReadError, OSError) as exc:
                if self.on_bad_file == "raise":
                    raise
                log.warning("skipping unreadable image %s: %s", path, exc)
            skipped.append(path)
        if not self.files:
            raise ValueError(
                f"{what}: no usable images left ({len(skipped)} skipped as unreadable or too small): "
                f"{[p.name for p in skipped][:10]}"
            )

    @property
    def num_images(self) -> int:
        """Number of usable images."""
        return len(self.files)

    def load_full(self, image_index: int) -> Any:
        """The whole arrays (uint8 HWC) one image's samples are cut from, for checks and debugging."""
        return self._memory[image_index] if self.cache_in_memory else self._load(self.files[image_index])

    def _readable(self, index: int) -> tuple[int, Any]:
        """Image `index`, or under on_bad_file='skip' the next readable one (each broken file is warned about once)."""
        n = self.num_images
        for j in (k % n for k in range(index, index + n)):
            if j in self._bad:
                continue
            try:
                return j, self.load_full(j)
            except (ImageReadError, OSError) as exc:
                if self.on_bad_file == "raise":
                    raise
                self._bad.add(j)
                log.warning("skipping unreadable image %s: %s", self.files[j], exc)
        raise ImageReadError(f"{self.files[0].parent}: no readable image left")


def _check_lr_size(
    lr_size: tuple[int, int], hr_size: tuple[int, int], factor: int, scale: int, lr_path: Path, hr_path: Path
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


class PyramidDataset(FolderDataset):
    """HR files serving mod-cropped uint8 pyramids: a level comes from ``lr_dir/X{f}/{stem}x{f}.png`` (sizes checked
    from the headers), else from ``lr_cache``."""

    lr_cache: LRCache | None

    def _check_pyramids(
        self, hr_files: Sequence[Path], lr_dir: Path | None, lr_required: bool, min_size: int, what: str
    ) -> None:
        """Find each HR file's LR files (with `lr_required` they must exist), then check every image."""
        self.min_size = min_size
        self.lr_files: dict[Path, dict[int, Path]] = {}
        for hr_path in hr_files:
            candidates = (
                {f: lr_dir / f"X{f}" / f"{hr_path.stem}x{f}.png" for f in self.factors} if lr_dir is not None else {}
            )
            for lr_path in candidates.values():
                if lr_required and not lr_path.is_file():
                    raise FileNotFoundError(f"LR file {lr_path} for HR file {hr_path} does not exist")
            self.lr_files[hr_path] = {f: p for f, p in candidates.items() if p.is_file()}
        self._check_files(hr_files, what)

    def _fits(self, path: Path) -> bool:
        """Header checks (LR/HR size mismatches raise here); the mod-cropped HR must hold a min_size patch."""
        h, w = read_image_size(path, self.max_pixels)
        for f, lr_path in self.lr_files[path].items():
            _check_lr_size(read_image_size(lr_path, self.max_pixels), (h, w), f, self.scale, lr_path, path)
        h, w, m = h - h % self.scale, w - w % self.scale, self.min_size
        if h >= m and w >= m:
            return True
        log.warning("skipping %s: %dx%d (WxH, mod-cropped) is smaller than the %dx%d patch needed", path, w, h, m, m)
        return False

    def _load(self, path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
        """Decode and mod-crop the HR; each LR level comes from its file (cropped to HR/f) or from the cache."""
        full = read_image(path, self.max_pixels)
        hr = mod_crop(full, self.scale)
        levels: dict[int, np.ndarray] = {}
        for f, lr_path in self.lr_files[path].items():
            lr = read_image(lr_path, self.max_pixels)
            nh, nw = _check_lr_size(lr.shape[:2], full.shape[:2], f, self.scale, lr_path, path)
            levels[f] = np.ascontiguousarray(lr[:nh, :nw])
        if len(levels) < len(self.factors):
            assert self.lr_cache is not None
            levels = dict(zip(self.factors, self.lr_cache.get(path, hr, self.max_pixels))) | levels
        return hr, [levels[f] for f in self.factors]
