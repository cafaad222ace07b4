"""Image files for SR: pixel-bounded, fully decoded up front, and every failure an error naming the file."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from drn_lightning.options import ExpectedError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
UPSCALE_EXTENSIONS: frozenset[str] = IMAGE_EXTENSIONS | {".gif"}  # upscaling takes a GIF's first frame
MAX_IMAGE_PIXELS: int = 64 * 1024 * 1024  # default bound on width * height (~17x a DIV2K image)
ON_BAD_FILE_CHOICES: tuple[str, ...] = ("raise", "skip")  # an unreadable file stops the run, or is left out
_ALLOWED_MODES = "allowed: 8-bit or 16-bit greyscale/RGB(A), palette, CMYK"


class ImageReadError(ExpectedError, ValueError):
    """An image file that exists but cannot be used: empty, not an image, truncated, too large."""


def set_max_image_pixels(max_pixels: int) -> None:
    """Change the default pixel bound (and Pillow's) for this process, e.g. for very large photos."""
    global MAX_IMAGE_PIXELS
    MAX_IMAGE_PIXELS = _limit(max_pixels)


def _limit(max_pixels: int | None) -> int:
    """The effective bound; Pillow's own bomb check is raised to it so it never fires first."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    if limit < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 with round(v / 257), so 65535 -> 255 and 257 * k -> k exactly."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _to_rgb8(img: Image.Image, path: Path) -> np.ndarray:
    """Any photo-like Pillow mode as (H, W, 3) uint8 RGB: 16-bit via round(v / 257), alpha dropped keeping colour."""
    if img.mode == "F":
        raise ImageReadError(f"{path}: floating-point images (mode F) are not supported; {_ALLOWED_MODES}")
    if img.mode == "I" or img.mode.startswith("I;16"):
        raw = np.asarray(img)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise ImageReadError(
                f"{path}: 32-bit integer image with values outside 0..65535 is not supported; {_ALLOWED_MODES}"
            )
        return np.repeat(sixteen_to_eight(raw)[..., None], 3, axis=2)
    if img.mode in ("P", "PA", "RGBa"):
        img = img.convert("RGBA")  # palettes with transparency convert without Pillow's warning; RGBa unpremultiplied
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def _bomb_error(path: Path, exc: Exception, limit: int) -> ImageReadError:
    return ImageReadError(f"{path}: refused as a possible decompression bomb ({exc}); the limit is {limit} pixels")


@contextlib.contextmanager
def _checked_image(path: Path, max_pixels: int | None, decode: bool = False) -> Iterator[Image.Image]:
    """Opened within the pixel bound, header only unless `decode`; a failure, in the with block too, names the file."""
    limit = _limit(max_pixels)
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file does not exist")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(path, exc, limit) from exc
        except Image.UnidentifiedImageError as exc:
            formats = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
            raise ImageReadError(f"{path}: not a readable image (allowed formats: {formats})") from exc
        except Exception as exc:  # Pillow raises many types for corrupt headers
            raise ImageReadError(f"{path}: cannot open image: {exc}") from exc
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageReadError(f"{path}: image has an empty canvas ({width}x{height})")
            if width * height > limit:
                raise ImageReadError(
                    f"{path}: image is {width}x{height} = {width * height} pixels, over the limit of {limit} pixels "
                    "(possible decompression bomb); raise it with max_pixels=... or "
                    "drn_lightning.data.io.set_max_image_pixels() if the file is trusted"
                )
            try:
                if decode:
                    img.load()
                yield img
            except (ImageReadError, MemoryError):
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise _bomb_error(path, exc, limit) from exc
            except Exception as exc:
                raise ImageReadError(f"{path}: cannot decode image (truncated or corrupt?): {exc}") from exc


def read_image_size(path: str | os.PathLike[str], max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) from the header alone, so large sets can be validated without decoding."""
    with _checked_image(Path(path), max_pixels) as img:
        return img.height, img.width


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Decode fully to (H, W, 3) uint8 RGB, failing here (not in training); no EXIF rotation, as DIV2K's LR had none."""
    with _checked_image(Path(path), max_pixels, decode=True) as img:
        return _to_rgb8(img, Path(path))


def open_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> Image.Image:
    """The decoded first frame (animations warn), upright; mode, alpha, EXIF and ICC kept, as upscaling needs."""
    with _checked_image(Path(path), max_pixels, decode=True) as img:
        if (frames := getattr(img, "n_frames", 1)) > 1:
            warnings.warn(f"{path}: animated ({frames} frames); only the first frame is used", stacklevel=2)
        return ImageOps.exif_transpose(img)  # a copy, the orientation tag dropped


def list_images(folder: str | os.PathLike[str], extensions: Collection[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Sorted image files directly in `folder`, skipping hidden and AppleDouble (`._x.png`) files."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: image folder does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a folder of images, found a file")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )
    if not files:
        raise ValueError(f"{folder}: folder contains no images (allowed extensions: {', '.join(sorted(extensions))})")
    return files
