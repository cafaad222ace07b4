"""Image file reading for SR datasets: always (H, W, 3) uint8 RGB, or a clear error naming the file.

Pillow does the decoding. Around it this module adds what a long training run needs:

* a pixel-count bound checked from the header before any pixel is decoded, so a decompression
  bomb (a tiny file claiming a huge canvas) fails fast with :class:`ImageReadError`; Pillow's own
  ``DecompressionBombWarning`` is turned into that error too;
* ``img.load()`` inside the reader, so truncated files fail here and not deep inside a worker;
* conversion of every mode Pillow yields for photos to 8-bit RGB. 16-bit greyscale (``I;16*``,
  ``I``) is rescaled with ``round(v / 257)`` (Pillow's own ``convert("L")`` clips it to 255 instead).
  16-bit RGB(A) PNGs are narrowed to 8 bits by Pillow's decoder itself (it keeps the high byte,
  ``v // 256``), which is at most one level away from ``round(v / 257)``; that is accepted.
  Alpha is dropped (the colour channels are kept as stored), palettes are expanded,
  CMYK uses Pillow's conversion. EXIF orientation is not applied: pixels are used as stored,
  the same way the LR files of DIV2K-style sets were produced from them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageReadError",
    "list_images",
    "read_image",
    "read_image_size",
    "set_max_image_pixels",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
"""Lower-case suffixes that :func:`list_images` treats as images."""

MAX_IMAGE_PIXELS: int = 64 * 1024 * 1024
"""Default bound on width * height (64 Mpx, ~17x a DIV2K image); larger files are refused."""

ON_BAD_FILE_CHOICES: tuple[str, ...] = ("raise", "skip")
"""What a dataset does with an unreadable file: stop naming it, or warn and leave it out."""


class ImageReadError(ValueError):
    """An image file that exists but cannot be used: empty, not an image, truncated, too large."""


def set_max_image_pixels(max_pixels: int) -> None:
    """Change the default pixel bound (and Pillow's) for this process, e.g. for very large photos."""
    global MAX_IMAGE_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    MAX_IMAGE_PIXELS = max_pixels
    Image.MAX_IMAGE_PIXELS = max_pixels


def _limit(max_pixels: int | None) -> int:
    """Resolve the effective bound and keep Pillow's own bomb check from firing below it."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    if limit < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        # Pillow would warn/raise first on images between its bound and ours; the caller asked
        # for the larger bound explicitly, so Pillow's follows it.
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def _check_size(path: Path, size: tuple[int, int], limit: int) -> None:
    """Refuse empty canvases and canvases over the pixel bound before decoding."""
    width, height = size
    if width < 1 or height < 1:
        raise ImageReadError(f"{path}: image has an empty canvas ({width}x{height})")
    if width * height > limit:
        raise ImageReadError(
            f"{path}: image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limit} pixels (possible decompression bomb); raise it with max_pixels=... or "
            "drn_lightning.data.io.set_max_image_pixels() if the file is trusted"
        )


def sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 with round(v / 257), so 65535 -> 255 and 257 * k -> k exactly."""
    wide = values.astype(np.uint32)
    return ((wide + 128) // 257).astype(np.uint8)


def _to_rgb8(img: Image.Image, path: Path) -> np.ndarray:
    """Convert any photo-like Pillow mode to an (H, W, 3) uint8 RGB array."""
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img, dtype=np.uint8)
    elif mode.startswith("I;16"):
        grey = sixteen_to_eight(np.asarray(img).astype(np.uint16))
        arr = np.repeat(grey[..., None], 3, axis=2)
    elif mode == "I":
        raw = np.asarray(img)
        if raw.size and (raw.min() < 0 or raw.max() > 65535):
            raise ImageReadError(
                f"{path}: 32-bit integer image with values outside 0..65535 is not supported; "
                "allowed: 8-bit or 16-bit greyscale/RGB(A), palette, CMYK"
            )
        grey = sixteen_to_eight(raw)
        arr = np.repeat(grey[..., None], 3, axis=2)
    elif mode == "F":
        raise ImageReadError(
            f"{path}: floating-point images (mode F) are not supported; "
            "allowed: 8-bit or 16-bit greyscale/RGB(A), palette, CMYK"
        )
    elif mode in ("P", "PA"):
        # Through RGBA so palettes with transparency convert without Pillow's warning.
        arr = np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., :3]
    elif mode in ("RGBA", "RGBX", "RGBa"):
        arr = np.asarray(img.convert("RGBA") if mode == "RGBa" else img, dtype=np.uint8)[..., :3]
    elif mode in ("L", "LA", "La", "1"):
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
        arr = np.repeat(grey[..., None], 3, axis=2)
    else:  # CMYK, YCbCr, LAB, HSV, ...
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageReadError(f"{path}: unexpected decoded shape {arr.shape} from mode {mode}")
    return np.ascontiguousarray(arr)


def _open_checked(path: Path, limit: int) -> Image.Image:
    """Open lazily (header only), mapping every failure to ImageReadError naming the file."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file does not exist")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    try:
        img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(
            f"{path}: refused as a possible decompression bomb ({exc}); the limit is {limit} pixels"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(
            f"{path}: not a readable image (allowed formats: "
            f"{', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))})"
        ) from exc
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise ImageReadError(f"{path}: cannot open image: {exc}") from exc
    return img


@contextlib.contextmanager
def _checked_image(path: Path, limit: int) -> Iterator[Image.Image]:
    """An opened image whose header passed the size limit, with PIL's bomb warning raised as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = _open_checked(path, limit)
        with img:
            _check_size(path, img.size, limit)
            yield img


def read_image_size(path: str | os.PathLike[str], max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) from the header alone, so large sets can be validated without decoding."""
    path = Path(path)
    with _checked_image(path, _limit(max_pixels)) as img:
        width, height = img.size
    return height, width


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Decode an image fully to (H, W, 3) uint8 RGB, failing here (not in training) on bad files."""
    path = Path(path)
    limit = _limit(max_pixels)
    with _checked_image(path, limit) as img:
        try:
            img.load()  # decodes all pixel data now: truncated/corrupt files raise here
            return _to_rgb8(img, path)
        except ImageReadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageReadError(
                f"{path}: refused as a possible decompression bomb ({exc}); the limit is {limit} pixels"
            ) from exc
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageReadError(f"{path}: cannot decode image (truncated or corrupt?): {exc}") from exc


def _is_image_name(name: str) -> bool:
    """Image suffix, and not a hidden/AppleDouble file such as ``._0001.png``."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Sorted image files directly in ``folder``; a missing or image-less folder is an error."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: image folder does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a folder of images, found a file")
    files = sorted(p for p in folder.iterdir() if p.is_file() and _is_image_name(p.name))
    if not files:
        raise ValueError(
            f"{folder}: folder contains no images (allowed extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return files
