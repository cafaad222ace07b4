"""Image reading: mode conversions with hand-checked pixels, and every kind of bad file."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drn_lightning.data.io import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image, read_image_size


def _png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes] | None) -> bytes:
    """A minimal PNG written by hand (filter 0 on every row), so tests control the header exactly."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IHDR", ihdr)
    if rows is not None:
        body += chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows)))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def _save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


# ---------------------------------------------------------------- conversions


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    path = _save(Image.fromarray(arr), tmp_path / "rgb.png")
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, arr)
    assert read_image_size(path) == (4, 5)


def test_greyscale_is_replicated(tmp_path: Path) -> None:
    path = _save(Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), mode="L"), tmp_path / "g.png")
    out = read_image(path)
    assert out.shape == (1, 3, 3)
    assert out[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]


def test_rgba_drops_alpha_keeping_stored_colour(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    path = _save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "a.png")
    assert read_image(path)[0].tolist() == [[10, 20, 30], [200, 100, 50]]


def test_la_to_rgb(tmp_path: Path) -> None:
    la = np.array([[[50, 128], [3, 0]]], dtype=np.uint8)
    path = _save(Image.fromarray(la, mode="LA"), tmp_path / "la.png")
    assert read_image(path)[0].tolist() == [[50, 50, 50], [3, 3, 3]]


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    path = _save(img, tmp_path / "p.png", transparency=0)
    assert Image.open(path).mode == "P"
    assert read_image(path)[0].tolist() == [[255, 0, 0], [0, 255, 0]]


def test_bilevel(tmp_path: Path) -> None:
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    path = _save(img, tmp_path / "b.png")
    assert read_image(path)[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_cmyk_tiff(tmp_path: Path) -> None:
    img = Image.new("CMYK", (2, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # no ink -> white
    img.putpixel((1, 0), (0, 255, 0, 0))  # full magenta -> (255, 0, 255)
    path = _save(img, tmp_path / "c.tif")
    assert read_image(path)[0].tolist() == [[255, 255, 255], [255, 0, 255]]


def test_16bit_grey_is_scaled_by_257_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 128, 129, 257, 1000, 32896, 65535]], dtype=">u2")
    path = tmp_path / "g16.png"
    path.write_bytes(_png_bytes(values.shape[1], 1, 16, 0, [values[0].tobytes()]))
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    # round(v / 257): 128/257=0.498 -> 0, 129/257=0.502 -> 1, 1000/257=3.89 -> 4, 32896 = 128*257
    assert out[0, :, 0].tolist() == [0, 0, 1, 1, 4, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_16bit_rgb_within_one_level_of_exact(tmp_path: Path) -> None:
    values = np.array([[[0, 32896, 65535], [2770, 129, 65280]]], dtype=">u2")
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_bytes(2, 1, 16, 2, [values[0].tobytes()]))
    out = read_image(path).astype(int)
    exact = np.floor(values.astype(np.float64) / 257 + 0.5)
    assert np.abs(out - exact).max() <= 1
    assert out[0, 0].tolist() == [0, 128, 255]


def test_32bit_int_tiff(tmp_path: Path) -> None:
    ok = _save(Image.fromarray(np.array([[0, 257, 65535]], dtype=np.int32), mode="I"), tmp_path / "i.tif")
    assert read_image(ok)[0, :, 0].tolist() == [0, 1, 255]
    bad = _save(Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I"), tmp_path / "big.tif")
    with pytest.raises(ImageReadError, match="big.tif"):
        read_image(bad)


# ---------------------------------------------------------------- bad files


def _real_png(path: Path, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    return _save(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), path)


def test_truncated_png_fails_on_read(tmp_path: Path) -> None:
    good = _real_png(tmp_path / "good.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert read_image_size(cut) == (64, 64)  # the header is intact ...
    with pytest.raises(ImageReadError, match="cut.png"):  # ... but decoding must fail here
        read_image(cut)


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*empty"):
        read_image(empty)


def test_text_file_named_png(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="notes.png"):
        read_image(fake)
    assert issubclass(ImageReadError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_decompression_bomb_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bytes(100_000, 100_000, 8, 2, None))  # 10 Gpx claimed by a 60-byte file
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageReadError, match=r"bomb\.png.*decompression bomb"):
        read_image(bomb)
    with pytest.raises(ImageReadError, match="bomb.png"):
        read_image_size(bomb)


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = _real_png(tmp_path / "small.png", size=20)
    with pytest.raises(ImageReadError, match=r"small\.png.*400 pixels.*limit of 100"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=400).shape == (20, 20, 3)


# ---------------------------------------------------------------- folders


def test_list_images_sorted_filtered(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.webp", "d.tiff", "notes.txt", "._a.png", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp", "d.tiff"]
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)


def test_list_images_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_images(tmp_path / "missing_dir")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="empty_dir.*no images"):
        list_images(tmp_path / "empty_dir")
