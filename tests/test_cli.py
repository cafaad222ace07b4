"""`drn-sr` command line: outputs, one-line errors with non-zero exits, convert round trip, info."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drn_lightning.cli import main
from drn_lightning.models import build_drn, load_official, save_official


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random drn_tiny x2 pair in the authors' format."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    primal, duals = build_drn("drn_tiny", 2)
    save_official(primal, duals, folder / "tiny2.pt", folder / "tiny2_dual.pt")
    return folder / "tiny2.pt", folder / "tiny2_dual.pt"


def write_image(path: Path, height: int = 12, width: int = 15, seed: int = 0) -> np.ndarray:
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return array


def png_claiming(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height but holds no pixel data: a decompression-bomb header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_folder_with_a_corrupt_file_continues_and_reports_it(tmp_path: Path, weights, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = {name: write_image(src / name, seed=i) for i, name in enumerate(["a.png", "b.png"])}
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    code = main(["upscale", str(src), "-o", str(tmp_path / "out"), "--weights", str(weights[0])])
    out, err = capsys.readouterr()
    assert code != 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_x2.png", "b_x2.png"]
    for name, array in good.items():
        sr = np.asarray(Image.open(tmp_path / "out" / f"{Path(name).stem}_x2.png"))
        assert sr.shape == (array.shape[0] * 2, array.shape[1] * 2, 3)
    assert "1 of 3 images failed" in err and "broken.jpg" in err
    assert "Traceback" not in err + out


def test_upscaled_file_matches_the_python_api(tmp_path: Path, weights) -> None:
    from drn_lightning.inference import upscale

    array = write_image(tmp_path / "photo.png", 10, 13)
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "photo.png"),
                "-o",
                str(tmp_path / "o"),
                "--weights",
                str(weights[0]),
                "--scale",
                "2",
            ]
        )
        == 0
    )
    saved = np.asarray(Image.open(tmp_path / "o" / "photo_x2.png"))
    assert np.array_equal(saved, upscale(array, weights[0], device="cpu"))


def test_formats_tiles_and_name_collisions(tmp_path: Path, weights) -> None:
    write_image(tmp_path / "a.png", 20, 18)
    write_image(tmp_path / "a.jpg", 20, 18, seed=1)
    args = [
        "upscale",
        str(tmp_path / "a.png"),
        str(tmp_path / "a.jpg"),
        "-o",
        str(tmp_path / "o"),
        "--weights",
        str(weights[0]),
    ]
    assert main([*args, "--tile", "12", "--tile-overlap", "4", "--format", "webp"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a-jpg_x2.webp", "a-png_x2.webp"]
    assert Image.open(tmp_path / "o" / "a-png_x2.webp").size == (36, 40)
    one = ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "e"), "--weights", str(weights[0])]
    assert main([*one, "--self-ensemble", "--format", "jpg"]) == 0
    assert Image.open(tmp_path / "e" / "a_x2.jpg").size == (36, 40)


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (
            lambda t, w: ["upscale", str(t / "missing.png"), "-o", str(t / "o"), "--weights", str(w)],
            "missing.png: input does not exist",
        ),
        (
            lambda t, w: ["upscale", str(t / "ok.png"), "-o", str(t / "o"), "--weights", str(w), "--scale", "4"],
            "expected scale x4, found drn_tiny x2",
        ),
        (lambda t, w: ["upscale", str(t / "ok.png"), "-o", str(t / "o"), "--weights", str(t / "nope.pt")], "nope.pt"),
        (
            lambda t, w: ["upscale", str(t / "bomb.png"), "-o", str(t / "o"), "--weights", str(w)],
            "possible decompression bomb",
        ),
        (
            lambda t, w: ["upscale", str(t / "ok.png"), "-o", str(t / "o"), "--weights", str(w), "--max-pixels", "100"],
            "over the limit of 100 pixels",
        ),
        (
            lambda t, w: ["upscale", str(t / "empty.png"), "-o", str(t / "o"), "--weights", str(w)],
            "empty.png: file is empty",
        ),
        (
            lambda t, w: ["upscale", str(t / "ok.png"), "-o", str(t / "ok.png") + "/sub", "--weights", str(w)],
            "cannot write to output folder",
        ),
        (
            lambda t, w: [
                "upscale",
                str(t / "ok.png"),
                "-o",
                str(t / "o"),
                "--weights",
                str(w),
                "--precision",
                "fp16",
                "--device",
                "cpu",
            ],
            "--precision",
        ),
        (lambda t, w: ["info", str(t / "ok.png")], "ok.png"),
    ],
    ids=[
        "missing-input",
        "scale-mismatch",
        "missing-weights",
        "bomb-header",
        "max-pixels",
        "empty-image",
        "output-under-a-file",
        "fp16-on-cpu",
        "info-not-weights",
    ],
)
def test_expected_failures_print_one_line(tmp_path: Path, weights, capsys, make_args, expected: str) -> None:
    write_image(tmp_path / "ok.png")
    png_claiming(tmp_path / "bomb.png", 30000, 30000)
    (tmp_path / "empty.png").write_bytes(b"")
    code = main(make_args(tmp_path, weights[0]))
    _out, err = capsys.readouterr()
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in err


def test_unwritable_output_folder(tmp_path: Path, weights, capsys) -> None:
    write_image(tmp_path / "ok.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod 555 does not stop writes (the file-parent case covers this)")
        code = main(["upscale", str(tmp_path / "ok.png"), "-o", str(locked), "--weights", str(weights[0])])
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert code != 0 and error_lines(err) == [f"error: {locked}: cannot write to output folder (-o): Permission denied"]


def test_console_script_runs_without_traceback(tmp_path: Path, weights) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "drn_lightning.cli",
            "upscale",
            str(tmp_path / "none.png"),
            "-o",
            str(tmp_path),
            "--weights",
            str(weights[0]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {tmp_path / 'none.png'}: input does not exist"


def test_convert_round_trip_is_bit_exact(tmp_path: Path, weights, capsys) -> None:
    primal_pt, dual_pt = weights
    ckpt = tmp_path / "model.ckpt"
    assert main(["convert", str(primal_pt), "--dual", str(dual_pt), "-o", str(ckpt)]) == 0
    assert "found drn_tiny x2" in capsys.readouterr().out
    assert main(["convert", str(ckpt), "-o", str(tmp_path / "back.pt")]) == 0
    assert (tmp_path / "back_dual_model.pt").is_file()
    for original, back in ((primal_pt, tmp_path / "back.pt"), (dual_pt, tmp_path / "back_dual_model.pt")):
        a = torch.load(original, weights_only=True)
        b = torch.load(back, weights_only=True)
        a_items = a.items() if isinstance(a, dict) else [(i, d) for i, d in enumerate(a)]
        b_items = b.items() if isinstance(b, dict) else [(i, d) for i, d in enumerate(b)]
        flat_a = {f"{k}": v for k, v in a_items}
        flat_b = {f"{k}": v for k, v in b_items}
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            va, vb = flat_a[key], flat_b[key]
            if isinstance(va, dict):
                assert list(va) == list(vb) and all(
                    torch.equal(va[k], vb[k]) and va[k].dtype == vb[k].dtype for k in va
                )
            else:
                assert torch.equal(va, vb) and va.dtype == vb.dtype
    _primal, duals, info = load_official(tmp_path / "back.pt", tmp_path / "back_dual_model.pt")
    assert info["variant"] == "drn_tiny" and info["scale"] == 2 and len(duals) == 1


def test_info_prints_the_architecture(weights, capsys) -> None:
    assert main(["info", str(weights[0]), "--dual", str(weights[1])]) == 0
    out = capsys.readouterr().out
    primal, duals = build_drn("drn_tiny", 2)
    assert "variant:    drn_tiny" in out and "scale:      x2" in out
    assert "n_feats:    8" in out and "n_blocks:   4" in out
    assert f"{sum(p.numel() for p in primal.parameters()):,} (primal)" in out
    assert f"{sum(p.numel() for p in duals.parameters()):,} parameters" in out


def test_bad_option_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["upscale", "x.png", "-o", "o", "--weights", "w.pt", "--tile", "-3"])
    assert exc.value.code == 2
    assert "--tile" in capsys.readouterr().err


# --- issue 15: upscale never eats its input; out-of-memory hints; non-finite weights ----------------


@pytest.mark.parametrize("spelling", ["same", "symlink"])
def test_output_folder_holding_an_input_is_refused_before_anything_is_written(
    tmp_path: Path, weights, capsys, spelling: str
) -> None:
    """`cat.png` and `cat_x2.png` in one folder, `-o` that folder: `cat_x2.png` would be replaced, then upscaled."""
    folder = tmp_path / "photos"
    folder.mkdir()
    write_image(folder / "cat.png", seed=1)
    write_image(folder / "cat_x2.png", seed=2)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = folder
    if spelling == "symlink":
        out = tmp_path / "link"
        out.symlink_to(folder)
    code = main(["upscale", str(folder), "-o", str(out), "--weights", str(weights[0])])
    which = "INPUT" if spelling == "same" else f"INPUT {folder / 'cat_x2.png'}"
    assert code == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: -o {out / 'cat_x2.png'}: is an input of this command ({which}); choose an output folder (-o) without inputs"
    ]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path: Path, weights, capsys) -> None:
    from drn_lightning.inference import upscale

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    a = write_image(src / "a.png", seed=1)
    b = write_image(src / "b.png", seed=2)
    (out / "a_x2.png").write_bytes(b"kept")
    args = ["upscale", str(src), "-o", str(out), "--weights", str(weights[0])]
    assert main(args) == 0
    stdout = capsys.readouterr().out
    assert f"skipped {src / 'a.png'}: {out / 'a_x2.png'} exists (--overwrite replaces it)" in stdout
    assert f"wrote 1 image to {out}, skipped 1 existing" in stdout
    assert (out / "a_x2.png").read_bytes() == b"kept"
    assert np.array_equal(np.asarray(Image.open(out / "b_x2.png")), upscale(b, weights[0], device="cpu"))
    assert main([*args, "--overwrite"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(out / "a_x2.png")), upscale(a, weights[0], device="cpu"))


@pytest.mark.parametrize(
    ("error", "tile", "hint"),
    [
        (RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: not enough memory"), 64, "--tile 32"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), 9, "--tile 4"),
        (MemoryError("Unable to allocate 3.00 GiB for an array"), 300, "--tile 150"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), None, "--tile 256"),
    ],
)
def test_out_of_memory_names_a_smaller_tile(
    tmp_path: Path, weights, capsys, monkeypatch, error: BaseException, tile: int | None, hint: str
) -> None:
    from drn_lightning.inference import Upscaler

    def out_of_memory(self, lr, **kwargs):
        raise error

    monkeypatch.setattr(Upscaler, "upscale_tensor", out_of_memory)
    write_image(tmp_path / "a.png")
    tiles = ["--tile", str(tile)] if tile else []
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", str(weights[0]), *tiles])
    (line,) = error_lines(capsys.readouterr().err)
    assert code == 1 and str(tmp_path / "a.png") in line and line.endswith(f"{hint})")
    assert not (tmp_path / "o" / "a_x2.png").exists()


@pytest.mark.parametrize(("value", "suffix"), [(float("nan"), ".pt"), (float("inf"), ".ckpt")])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path: Path, capsys, value: float, suffix: str) -> None:
    """Before: exit 0 and an all-black image."""
    from drn_lightning.models import official_to_checkpoint

    torch.manual_seed(0)
    primal, duals = build_drn("drn_tiny", 2)
    with torch.no_grad():
        primal.head.weight[0, 0, 0, 0] = value
    path = tmp_path / f"diverged{suffix}"
    if suffix == ".pt":
        save_official(primal, duals, path)
    else:
        official_to_checkpoint(primal, duals, {"variant": "drn_tiny", "scale": 2, "n_feats": 8, "n_blocks": 4}, path)
    write_image(tmp_path / "a.png")
    code = main(["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", str(path)])
    assert code == 1
    assert error_lines(capsys.readouterr().err) == [
        f"error: {path}: non-finite weights (NaN or Inf) in ['head.weight']; the weights are unusable"
    ]
    assert not (tmp_path / "o" / "a_x2.png").exists()


# --- issue 21: upscale keeps image facts (orientation, alpha, grey, palettes, animations, skipped files) -------


def _upscaled(path: Path, weights_file: Path) -> Image.Image:
    """What the Python API gives for the file, upright: what the command line must have written."""
    from PIL import ImageOps

    from drn_lightning.inference import upscale

    return upscale(ImageOps.exif_transpose(Image.open(path)), weights_file, device="cpu")


def test_upscale_applies_exif_orientation_and_keeps_the_other_metadata(tmp_path: Path, weights) -> None:
    """A phone photo stored sideways (EXIF orientation 6): before, written sideways at 60x40 instead of 40x60."""
    from PIL import ExifTags, ImageCms
    from skimage import data

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation], exif[ExifTags.Base.Make] = 6, "test camera"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(data.chelsea()[40:60, 120:150]).save(tmp_path / "p.jpg", exif=exif.tobytes(), icc_profile=icc)
    assert main(["upscale", str(tmp_path / "p.jpg"), "-o", str(tmp_path / "o"), "--weights", str(weights[0])]) == 0
    out = Image.open(tmp_path / "o" / "p_x2.png")
    assert out.size == (40, 60) and np.array_equal(
        np.asarray(out), np.asarray(_upscaled(tmp_path / "p.jpg", weights[0]))
    )
    assert dict(out.getexif()) == {ExifTags.Base.Make: "test camera"}  # no orientation tag: it would turn it again
    assert out.info["icc_profile"] == icc


def test_upscale_keeps_alpha_grey_and_palette_transparency(tmp_path: Path, weights, capsys) -> None:
    """Before: every file was read as RGB, so alpha was lost and greyscale came out RGB."""
    from skimage import data

    src = tmp_path / "in"
    src.mkdir()
    rgb = data.chelsea()[60:80, 100:125]
    alpha = np.tile(np.linspace(0, 255, 25, dtype=np.uint8), (20, 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(src / "rgba.png")
    Image.fromarray(data.camera()[200:218, 200:222]).save(src / "grey.png")
    palette = Image.fromarray(rgb).quantize(8)
    palette.save(src / "pal.png", transparency=int(np.asarray(palette)[0, 0]))
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(weights[0])]) == 0
    for name, mode in (("rgba", "RGBA"), ("grey", "L"), ("pal", "RGBA")):
        out = Image.open(tmp_path / "o" / f"{name}_x2.png")
        assert out.mode == mode, name
        assert np.array_equal(np.asarray(out), np.asarray(_upscaled(src / f"{name}.png", weights[0]))), name
    clear = np.asarray(Image.open(tmp_path / "o" / "pal_x2.png"))[..., 3]
    assert clear.min() == 0 and clear.max() == 255  # the transparent colour stays transparent
    capsys.readouterr()
    assert (
        main(
            [
                "upscale",
                str(src / "rgba.png"),
                "-o",
                str(tmp_path / "j"),
                "--weights",
                str(weights[0]),
                "--format",
                "jpg",
            ]
        )
        == 0
    )
    assert error_lines(capsys.readouterr().err) == [
        f"warning: {src / 'rgba.png'}: alpha dropped, JPEG has none (--format png or webp keeps it)"
    ]
    assert Image.open(tmp_path / "j" / "rgba_x2.jpg").mode == "RGB"


def test_upscale_takes_an_animations_first_frame_and_lists_skipped_files(tmp_path: Path, weights, capsys) -> None:
    """Before: `.gif` was not in the folder scan, and files left out of a folder were not mentioned."""
    from skimage import data

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    frames = [Image.fromarray(data.coffee()[100 + 8 * i : 116 + 8 * i, 200:220]).quantize(16) for i in range(3)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    (src / "notes.txt").write_text("not an image")
    write_image(src / ".hidden.png")
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--weights", str(weights[0])]) == 0
    out, err = capsys.readouterr()
    assert error_lines(err) == [f"warning: {src / 'anim.gif'}: animated (3 frames); only the first frame is used"]
    for name, why in ((".hidden.png", "hidden"), ("notes.txt", "not an image"), ("sub", "folder, not searched")):
        assert f"skipped {src / name}: {why}" in out
    first = _upscaled(src / "anim.gif", weights[0])
    assert first.mode == "RGB" and first.size == (40, 32)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "anim_x2.png")), np.asarray(first))


def test_our_checkpoint_without_its_digest_needs_allow_unverified(
    weights: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`drn-sr convert` writes a digested .ckpt; with the digest key removed, every command refuses it unless
    `--allow-unverified` says so (the authors' own files, which never had one, load as they are)."""
    import torch

    from drn_lightning.models.weights import DIGEST_KEY

    primal, dual = weights
    ckpt = tmp_path / "ours.ckpt"
    assert main(["convert", str(primal), "--dual", str(dual), "-o", str(ckpt)]) == 0
    stripped = torch.load(ckpt, weights_only=True)
    del stripped[DIGEST_KEY]
    torch.save(stripped, ckpt)
    capsys.readouterr()
    assert main(["info", str(ckpt)]) != 0
    assert "digest" in capsys.readouterr().err
    assert main(["info", str(ckpt), "--allow-unverified"]) == 0
    assert main(["info", str(primal)]) == 0  # the authors' file
