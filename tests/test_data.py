"""Datasets: exact HR/LR patch correspondence, augmentation, caching, unpaired, benchmark, demo."""

from __future__ import annotations

import logging
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from torch.utils.data import default_collate

import drn_lightning.data.datasets as datasets_mod
import drn_lightning.ops.degrade as degrade_mod
from drn_lightning.data import (
    DEMO_GREYSCALE,
    DEMO_TRAIN,
    DEMO_VAL,
    BenchmarkDataset,
    ImageReadError,
    PairedDataset,
    UnpairedDataset,
    load_demo_image,
    materialize_demo,
)
from drn_lightning.data.datasets import DataError, MissingFolder
from drn_lightning.data.demo import DEMO_FILES, demo_image_path
from drn_lightning.ops.degrade import lr_pyramid
from drn_lightning.ops.imresize import imresize
from drn_lightning.options import OptionError

SCALE, PATCH = 4, 32


@pytest.fixture(autouse=True)
def _user_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default cache folder ($XDG_CACHE_HOME/drn_lightning) in a temporary folder, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg"))


# ---------------------------------------------------------------- helpers (independent of the code under test)


def _png(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _pyramid(hr: np.ndarray, scale: int) -> list[np.ndarray]:
    levels = lr_pyramid(torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))), scale)
    return [lv.permute(1, 2, 0).numpy() for lv in levels]


def _chw(t: torch.Tensor) -> np.ndarray:
    """(3, h, w) float 0-255 tensor -> (h, w, 3) uint8, checking the values are whole 8-bit numbers."""
    assert t.dtype == torch.float32 and t.dim() == 3 and t.shape[0] == 3
    arr = t.permute(1, 2, 0).numpy()
    assert arr.min() >= 0 and arr.max() <= 255 and np.array_equal(arr, np.round(arr))
    return arr.astype(np.uint8)


def _locate(full: np.ndarray, patch: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where the patch occurs in the full image, by exhaustive comparison."""
    windows = sliding_window_view(full, patch.shape[:2], axis=(0, 1))
    hits = np.argwhere((windows == patch.transpose(2, 0, 1)).all(axis=(2, 3, 4)))
    return [(int(y), int(x)) for y, x in hits]


def _crops() -> dict[str, np.ndarray]:
    """Real photo crops with sizes that are not multiples of the scale."""
    astro, coffee, chelsea = load_demo_image("astronaut"), load_demo_image("coffee"), load_demo_image("chelsea")
    return {
        "0001": astro[100:203, 150:241],  # 103 x 91: mod-crop to 100 x 88
        "0002": coffee[50:146, 200:302],  # 96 x 102
        "0003": chelsea[60:131, 120:198],  # 71 x 78
    }


@pytest.fixture(scope="module")
def div2k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny DIV2K layout: HR/ and LR/X4, LR/X2 with ``{stem}x{f}.png``, made with lr_pyramid.

    0001's LR is made from the full (not mod-cropped) HR, so its LR files are ceil-sized, as in
    DIV2K; the dataset must crop them to HR/f of the mod-cropped HR.
    """
    root = tmp_path_factory.mktemp("div2k")
    for stem, hr in _crops().items():
        _png(hr, root / "HR" / f"{stem}.png")
        source = hr if stem == "0001" else hr[: hr.shape[0] - hr.shape[0] % SCALE, : hr.shape[1] - hr.shape[1] % SCALE]
        for f, lv in zip((4, 2), _pyramid(np.ascontiguousarray(source), SCALE), strict=True):
            _png(lv, root / "LR" / f"X{f}" / f"{stem}x{f}.png")
    return root / "HR", root / "LR"


def _mod(hr: np.ndarray, s: int = SCALE) -> np.ndarray:
    return hr[: hr.shape[0] - hr.shape[0] % s, : hr.shape[1] - hr.shape[1] % s]


# ---------------------------------------------------------------- paired: exact correspondence


def test_div2k_patches_match_full_lr_crops(div2k: tuple[Path, Path]) -> None:
    hr_dir, lr_dir = div2k
    assert _load(lr_dir / "X4" / "0001x4.png").shape[:2] == (26, 23)  # ceil(103/4), ceil(91/4)
    ds = PairedDataset(hr_dir, SCALE, PATCH, lr_dir=lr_dir, augment=False, samples_per_epoch=60)
    assert len(ds) == 60 and len(ds.files) == 3
    torch.manual_seed(0)
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["paired"].dtype == torch.bool and bool(s["paired"]) and s["paired"].dim() == 0
        assert [tuple(t.shape) for t in s["lr"]] == [(3, 8, 8), (3, 16, 16)]
        hr_patch = _chw(s["hr"])
        assert hr_patch.shape == (PATCH, PATCH, 3)
        stem = Path(s["name"]).stem
        assert s["name"] == f"{stem}.png" and i % 3 == int(stem) - 1
        hr_full = _mod(_load(hr_dir / s["name"]))
        hits = _locate(hr_full, hr_patch)
        assert len(hits) == 1, "photo patches are unique in their image"
        y, x = hits[0]
        assert y % SCALE == 0 and x % SCALE == 0
        for lr_t, f in zip(s["lr"], (4, 2), strict=True):
            lr_full = _load(lr_dir / f"X{f}" / f"{stem}x{f}.png")
            q = PATCH // f
            np.testing.assert_array_equal(_chw(lr_t), lr_full[y // f : y // f + q, x // f : x // f + q])
        seen.add((stem, y, x))
    assert len(seen) > 20, "crops should vary"


def test_lr_patch_is_the_downscaled_hr_patch_away_from_borders(div2k: tuple[Path, Path]) -> None:
    hr_dir, lr_dir = div2k
    ds = PairedDataset(hr_dir, SCALE, PATCH, lr_dir=lr_dir, augment=False, samples_per_epoch=9)
    torch.manual_seed(1)
    for i in range(len(ds)):
        s = ds[i]
        hr_u8 = s["hr"].round().to(torch.uint8)
        for lr_t, f in zip(s["lr"], (4, 2), strict=True):
            down = imresize(hr_u8, scale=1.0 / f).to(torch.float32)
            m = 8 // f + 1  # cubic support is 2 LR pixels; stay clear of the patch border
            diff = (down[:, m:-m, m:-m] - lr_t[:, m:-m, m:-m]).abs().max()
            assert diff <= 1.0, f"x{f} interior differs by {diff}: crop misaligned"


def test_hr_only_pyramid_is_cached_and_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hr_dir = tmp_path / "photos"
    crops = _crops()
    for stem, hr in crops.items():
        _png(hr, hr_dir / f"{stem}.png")
    cache = tmp_path / "lr_cache"
    ds = PairedDataset(hr_dir, SCALE, PATCH, cache_dir=tmp_path, augment=False, samples_per_epoch=30)
    assert not cache.exists()  # nothing read or written before setup
    ds.setup()
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == 6 and all(n.endswith(("_x4.png", "_x2.png")) for n in cached)
    expected = {stem: _pyramid(np.ascontiguousarray(_mod(hr)), SCALE) for stem, hr in crops.items()}
    torch.manual_seed(2)
    for i in range(len(ds)):
        s = ds[i]
        stem = Path(s["name"]).stem
        (y, x), *rest = _locate(_mod(crops[stem]), _chw(s["hr"]))
        assert not rest and y % SCALE == 0 and x % SCALE == 0
        for lr_t, f, full in zip(s["lr"], (4, 2), expected[stem], strict=True):
            q = PATCH // f
            np.testing.assert_array_equal(_chw(lr_t), full[y // f : y // f + q, x // f : x // f + q])

    # a second dataset reads the cache and never recomputes
    def boom(hr: torch.Tensor, scale: int) -> torch.Tensor:
        raise AssertionError("cache miss")

    monkeypatch.setitem(degrade_mod.DEGRADATIONS, "bicubic", boom)
    again = PairedDataset(hr_dir, SCALE, PATCH, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.image(0)[1][1][0], expected["0001"][0])
    monkeypatch.undo()

    # a changed HR file (new size/mtime) gets a fresh pyramid, not the stale one
    new_hr = np.ascontiguousarray(crops["0002"][:, ::-1])
    _png(new_hr, hr_dir / "0001.png")
    os.utime(hr_dir / "0001.png", ns=(1, 10**18))
    changed = PairedDataset(hr_dir, SCALE, PATCH, cache_dir=tmp_path)
    np.testing.assert_array_equal(changed.image(0)[1][1][0], _pyramid(_mod(new_hr), SCALE)[0])
    assert len(list(cache.iterdir())) == 8


def test_default_cache_dir_is_the_user_cache_never_beside_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    hr_dir = tmp_path / "set" / "HRonly"
    _png(_crops()["0002"], hr_dir / "a.png")
    PairedDataset(hr_dir, 2, 16).setup()
    assert len(list((tmp_path / "xdg" / "drn_lightning" / "lr_cache").glob("a__*_x2.png"))) == 1
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["HRonly"]


@pytest.mark.parametrize("scale,levels", [(2, [2]), (8, [8, 4, 2])])
def test_other_scales_level_shapes(tmp_path: Path, scale: int, levels: list[int]) -> None:
    _png(_crops()["0001"], tmp_path / "hr" / "a.png")
    ds = PairedDataset(tmp_path / "hr", scale, 64, cache_dir=tmp_path / "c")
    s = ds[0]
    assert [tuple(t.shape) for t in s["lr"]] == [(3, 64 // f, 64 // f) for f in levels]


# ---------------------------------------------------------------- the npy store: the fast path for 2K images


@pytest.mark.parametrize("lr", ["files", "cache"])
def test_npy_store_gives_the_png_samples(div2k: tuple[Path, Path], tmp_path: Path, lr: str) -> None:
    """store='npy' yields exactly the tensors of store='png' for every (index, seed) key; prepare writes it once."""
    hr_dir, lr_dir = div2k
    kw = {"lr_dir": lr_dir if lr == "files" else None, "cache_dir": tmp_path, "samples_per_epoch": 24}
    png = PairedDataset(hr_dir, SCALE, PATCH, store="png", **kw)
    npy = PairedDataset(hr_dir, SCALE, PATCH, store="npy", cache_in_memory=False, **kw)
    npy.prepare()
    store = sorted((tmp_path / "npy_store").iterdir())
    assert [p.name.rsplit("_", 1)[1] for p in store] == ["hr.npy", "x2.npy", "x4.npy"] * 3  # no temporary files left
    assert isinstance(npy.image(0)[1][0], np.memmap)
    assert all(_same_sample(png[(i, 50 + i)], npy[(i, 50 + i)]) for i in range(len(png)))
    before = {p: p.stat().st_mtime_ns for p in store}
    PairedDataset(hr_dir, SCALE, PATCH, store="npy", **kw).prepare()  # once: a second run writes nothing
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "npy_store").iterdir()} == before
    with pytest.raises(OptionError, match="^store='lmdb': allowed: png, npy"):
        PairedDataset(hr_dir, SCALE, PATCH, store="lmdb")


# ---------------------------------------------------------------- augmentation


def _dihedral(a: np.ndarray, h: bool, v: bool, t: bool) -> np.ndarray:
    if h:
        a = np.flip(a, 1)
    if v:
        a = np.flip(a, 0)
    if t:
        a = np.swapaxes(a, 0, 1)
    return a


def test_augmentation_same_transform_on_all_levels(div2k: tuple[Path, Path]) -> None:
    """A keyed sample with augment=True is its augment=False twin (same crop) under one transform, on every level."""
    hr_dir, lr_dir = div2k
    ds = PairedDataset(hr_dir, SCALE, PATCH, lr_dir=lr_dir, augment=True)
    plain = PairedDataset(hr_dir, SCALE, PATCH, lr_dir=lr_dir, augment=False)
    flags = [(h, v, t) for h in (0, 1) for v in (0, 1) for t in (0, 1)]
    used = set()
    for seed in range(40):
        aug, ref = ds[(1, seed)], plain[(1, seed)]
        (flag,) = [f for f in flags if np.array_equal(_chw(aug["hr"]), _dihedral(_chw(ref["hr"]), *map(bool, f)))]
        for got, want in zip(aug["lr"], ref["lr"], strict=True):
            np.testing.assert_array_equal(_chw(got), _dihedral(_chw(want), *map(bool, flag)))
        used.add(flag)
    assert len(used) == 8


def test_random_augmentation_keeps_levels_aligned(div2k: tuple[Path, Path]) -> None:
    hr_dir, lr_dir = div2k
    ds = PairedDataset(hr_dir, SCALE, PATCH, lr_dir=lr_dir, augment=True, samples_per_epoch=24)
    torch.manual_seed(4)
    used = set()
    for i in range(len(ds)):
        s = ds[i]
        stem = Path(s["name"]).stem
        hr_full = _mod(_load(hr_dir / s["name"]))
        lr4 = _load(lr_dir / "X4" / f"{stem}x4.png")
        for flags in [(h, v, t) for h in (0, 1) for v in (0, 1) for t in (0, 1)]:
            # undo the candidate transform (its inverse: transpose first, then the flips)
            undo = lambda a, f=flags: _dihedral(np.swapaxes(a, 0, 1) if f[2] else a, bool(f[0]), bool(f[1]), False)  # noqa: E731
            hits = _locate(hr_full, np.ascontiguousarray(undo(_chw(s["hr"]))))
            if hits:
                (y, x), *_ = hits
                np.testing.assert_array_equal(undo(_chw(s["lr"][0])), lr4[y // 4 : y // 4 + 8, x // 4 : x // 4 + 8])
                lr2 = _load(lr_dir / "X2" / f"{stem}x2.png")
                np.testing.assert_array_equal(undo(_chw(s["lr"][1])), lr2[y // 2 : y // 2 + 16, x // 2 : x // 2 + 16])
                used.add(flags)
                break
        else:
            pytest.fail("augmented patch not found under any flip/transpose")
    assert len(used) >= 4, "random flips should vary"


def _same_sample(a: dict, b: dict) -> bool:
    return a["name"] == b["name"] and torch.equal(a["hr"], b["hr"]) and all(map(torch.equal, a["lr"], b["lr"]))


def test_keyed_samples_come_from_their_seed_not_the_global_rng(div2k: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, lr_dir = div2k
    paired = PairedDataset(hr_dir, SCALE, PATCH, lr_dir=lr_dir, augment=True, samples_per_epoch=6)
    _png(_crops()["0002"][:40, :37], tmp_path / "lr" / "real.png")
    unpaired = UnpairedDataset(SCALE, PATCH, lr_dir=tmp_path / "lr", augment=True, samples_per_epoch=6)
    for ds in (paired, unpaired):
        torch.manual_seed(0)
        first = [ds[(i, 100 + i)] for i in range(len(ds))]
        torch.manual_seed(1)
        torch.rand(7)  # another global RNG state and position
        again = [ds[(i, 100 + i)] for i in range(len(ds))]
        assert all(_same_sample(a, b) for a, b in zip(first, again, strict=True))
        other_seeds = [ds[(i, 200 + i)] for i in range(len(ds))]
        assert not all(_same_sample(a, b) for a, b in zip(first, other_seeds, strict=True))
        torch.manual_seed(0)
        state = torch.get_rng_state()
        ds[(0, 5)]
        assert torch.equal(torch.get_rng_state(), state), "a keyed sample must not consume the global RNG"
        with pytest.raises(TypeError, match=r"\(index, seed\)"):
            ds[(0, 1, 2)]
        with pytest.raises(IndexError, match="out of range"):
            ds[(len(ds), 1)]


# ---------------------------------------------------------------- validation and bad input


def test_patch_size_must_be_multiple_of_scale(div2k: tuple[Path, Path]) -> None:
    with pytest.raises(OptionError, match=r"^patch_size=30: must be a positive multiple of scale=4"):
        PairedDataset(div2k[0], 4, 30, lr_dir=div2k[1])
    with pytest.raises(OptionError, match=r"^scale=3: must be a power of two"):
        PairedDataset(div2k[0], 3, 30)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(
        MissingFolder, match=r"^hr_dir='.*nowhere': does not exist; for DF2K: 'drn-sr data fetch div2k"
    ) as err:
        PairedDataset(str(tmp_path / "nowhere"), 4, 32)
    assert (err.value.key, err.value.value) == ("hr_dir", str(tmp_path / "nowhere"))  # as given: Hydra re-keys it
    with pytest.raises(MissingFolder, match=r"^lr_dir=.*: does not exist"):
        PairedDataset(tmp_path, 4, 32, lr_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    empty = PairedDataset(tmp_path / "empty", 4, 32)  # a folder is read in setup, not when built
    with pytest.raises(DataError, match="empty.*no images"):
        empty.setup()


def test_setup_reads_the_folder_not_the_constructor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a constructor read a file")

    (tmp_path / "hr").mkdir()
    with monkeypatch.context() as m:
        for name in ("list_images", "read_image", "read_image_size"):
            m.setattr(datasets_mod, name, boom)
        paired = PairedDataset(tmp_path / "hr", SCALE, PATCH, cache_dir=tmp_path / "c")
        unpaired = UnpairedDataset(SCALE, PATCH, hr_dir=tmp_path / "hr")
        bench = BenchmarkDataset(tmp_path, "hr", SCALE, cache_dir=tmp_path / "c")
    _png(_crops()["0001"], tmp_path / "hr" / "late.png")  # written after construction: setup still finds it
    for ds in (paired, unpaired, bench):
        ds.setup()
        ds.setup()  # idempotent
        assert [p.name for p in ds.files] == ["late.png"] and len(ds) == 1


def test_missing_lr_level_folder_is_made_from_the_hr(div2k: tuple[Path, Path], tmp_path: Path) -> None:
    """lr_dir without X2 (as DIV2K lacks X8): that level is made with MATLAB bicubic, the X4 files still read."""
    hr_dir, lr_dir = div2k
    shutil.copytree(lr_dir / "X4", tmp_path / "LR" / "X4")
    ds = PairedDataset(hr_dir, SCALE, PATCH, lr_dir=tmp_path / "LR", cache_dir=tmp_path / "c", augment=False)
    hr, (x4, x2) = ds.image(1)[1]
    np.testing.assert_array_equal(x4, _load(lr_dir / "X4" / "0002x4.png"))
    np.testing.assert_array_equal(x2, _pyramid(hr, SCALE)[1])
    assert [p.name[-7:] for p in (tmp_path / "c" / "lr_cache").iterdir()] == ["_x2.png"] * 3


def test_lr_hr_size_mismatch_names_both_files(div2k: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, lr_dir = div2k
    bad_lr = tmp_path / "LR"
    for f in (4, 2):
        for p in (lr_dir / f"X{f}").iterdir():
            _png(_load(p), bad_lr / f"X{f}" / p.name)
    _png(_load(lr_dir / "X4" / "0002x4.png")[:-3], bad_lr / "X4" / "0002x4.png")  # 3 rows short
    for in_memory in (True, False):
        with pytest.raises(DataError, match=r"0002x4\.png.*HR file .*0002\.png"):
            PairedDataset(hr_dir, SCALE, PATCH, lr_dir=bad_lr, cache_in_memory=in_memory).setup()


def test_missing_lr_file_names_it(div2k: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, lr_dir = div2k
    part = tmp_path / "LR"
    for f in (4, 2):
        (part / f"X{f}").mkdir(parents=True)
        for p in (lr_dir / f"X{f}").iterdir():
            if not p.name.startswith("0003"):
                _png(_load(p), part / f"X{f}" / p.name)
    with pytest.raises(DataError, match=r"0003x.\.png.*0003\.png"):
        PairedDataset(hr_dir, SCALE, PATCH, lr_dir=part).setup()


def test_small_hr_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crops = _crops()
    _png(crops["0001"], tmp_path / "hr" / "big.png")
    _png(crops["0003"][:30, :40], tmp_path / "hr" / "tiny.png")
    with caplog.at_level(logging.WARNING):
        ds = PairedDataset(tmp_path / "hr", SCALE, PATCH, cache_dir=tmp_path / "c")
        ds.setup()
    assert [p.name for p in ds.files] == ["big.png"]
    assert any("tiny.png" in r.getMessage() and "smaller" in r.getMessage() for r in caplog.records)
    only_small = tmp_path / "small"
    _png(crops["0003"][:30, :40], only_small / "tiny.png")
    with pytest.raises(DataError, match="no usable images"):
        PairedDataset(only_small, SCALE, PATCH, cache_dir=tmp_path / "c").setup()


def _folder_with_bad_files(tmp_path: Path) -> Path:
    folder = tmp_path / "mixed"
    good = _png(_crops()["0001"], folder / "a_good.png")
    (folder / "b_empty.png").write_bytes(b"")
    (folder / "c_text.png").write_text("hello")
    (folder / "d_cut.png").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    return folder


def test_bad_files_raise_by_default(tmp_path: Path) -> None:
    folder = _folder_with_bad_files(tmp_path)
    with pytest.raises(ImageReadError, match="b_empty.png"):
        PairedDataset(folder, SCALE, PATCH, cache_dir=tmp_path / "c").setup()
    with pytest.raises(OptionError, match="on_bad_file"):
        PairedDataset(folder, SCALE, PATCH, on_bad_file="ignore")


def test_bad_files_skipped_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _folder_with_bad_files(tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = PairedDataset(folder, SCALE, PATCH, cache_dir=tmp_path / "c", on_bad_file="skip")
        ds.setup()
    assert [p.name for p in ds.files] == ["a_good.png"]
    text = caplog.text
    assert "b_empty.png" in text and "c_text.png" in text and "d_cut.png" in text


def test_lazy_mode_truncated_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "lazy"
    good = _png(_crops()["0001"], folder / "a.png")
    (folder / "b.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # header is fine
    raising = PairedDataset(folder, SCALE, PATCH, cache_dir=tmp_path / "c", cache_in_memory=False)
    raising.setup()
    assert len(raising.files) == 2  # only headers are read up front
    with pytest.raises(ImageReadError, match="b.png"):
        raising[1]
    with pytest.raises(ImageReadError, match="b.png"):
        raising.prepare()  # decoded on a worker process; the error comes back naming the file
    skipping = PairedDataset(folder, SCALE, PATCH, cache_dir=tmp_path / "c", cache_in_memory=False, on_bad_file="skip")
    with caplog.at_level(logging.WARNING):
        skipping.prepare()
        s = skipping[1]
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping unreadable image")]
    assert s["name"] == "a.png" and len(warned) == 2 and all("b.png" in w for w in warned)  # prepare, then first use


# ---------------------------------------------------------------- unpaired


def test_unpaired_from_lr_folder(tmp_path: Path) -> None:
    lr = _crops()["0002"][:40, :37]
    _png(lr, tmp_path / "lr" / "real.png")
    ds = UnpairedDataset(SCALE, PATCH, lr_dir=tmp_path / "lr", augment=False, samples_per_epoch=5)
    assert len(ds) == 5
    for i in range(5):
        s = ds[i]
        assert not bool(s["paired"]) and s["paired"].dtype == torch.bool
        assert s["name"] == "real.png"
        assert [tuple(t.shape) for t in s["lr"]] == [(3, 8, 8), (3, 16, 16)]
        assert tuple(s["hr"].shape) == (3, PATCH, PATCH)
        assert not s["hr"].any() and not s["lr"][1].any()
        assert len(_locate(lr, _chw(s["lr"][0]))) == 1


def test_unpaired_from_hr_nearest_drops_hr(tmp_path: Path) -> None:
    hr = _crops()["0001"]
    _png(hr, tmp_path / "hr" / "h.png")
    ds = UnpairedDataset(SCALE, PATCH, hr_dir=tmp_path / "hr", degradation="nearest", augment=False)
    full = ds.image(0)[1]
    # MATLAB nearest at 1/4 keeps pixel floor((i + 0.5) * 4) = 4 i + 2 of the mod-cropped HR
    np.testing.assert_array_equal(full, _mod(hr)[2::4, 2::4])
    s = ds[0]
    assert len(_locate(full, _chw(s["lr"][0]))) >= 1 and not s["hr"].any()
    with pytest.raises(OptionError, match="degradation"):
        UnpairedDataset(SCALE, PATCH, hr_dir=tmp_path / "hr", degradation="jpeg")
    with pytest.raises(OptionError, match="exactly one of lr_dir"):
        UnpairedDataset(SCALE, PATCH)


def test_unpaired_small_and_bad_files_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lr = _crops()["0002"]
    _png(lr[:20, :20], tmp_path / "lr" / "a.png")
    _png(lr[:5, :30], tmp_path / "lr" / "b_thin.png")  # 5 rows < 8-pixel LR patch
    (tmp_path / "lr" / "c_bad.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="c_bad.png"):
        UnpairedDataset(SCALE, PATCH, lr_dir=tmp_path / "lr").setup()
    with caplog.at_level(logging.WARNING):
        ds = UnpairedDataset(SCALE, PATCH, lr_dir=tmp_path / "lr", on_bad_file="skip")
        ds.setup()
    assert [p.name for p in ds.files] == ["a.png"]
    assert "b_thin.png" in caplog.text and "c_bad.png" in caplog.text


@pytest.mark.parametrize("degradation", ["bd", "bicubic"])
def test_unpaired_other_degradations(tmp_path: Path, degradation: str) -> None:
    _png(_crops()["0001"], tmp_path / "hr" / "h.png")
    ds = UnpairedDataset(SCALE, PATCH, hr_dir=tmp_path / "hr", degradation=degradation)
    assert ds.image(0)[1].shape == (25, 22, 3) and ds.image(0)[1].dtype == np.uint8


def test_paired_and_unpaired_collate_together(div2k: tuple[Path, Path], tmp_path: Path) -> None:
    _png(_crops()["0003"], tmp_path / "lr" / "x.png")
    paired = PairedDataset(div2k[0], SCALE, PATCH, lr_dir=div2k[1])
    unpaired = UnpairedDataset(SCALE, PATCH, lr_dir=tmp_path / "lr")
    batch = default_collate([paired[0], unpaired[0], paired[1]])
    assert batch["paired"].tolist() == [True, False, True]
    assert [tuple(t.shape) for t in batch["lr"]] == [(3, 3, 8, 8), (3, 3, 16, 16)]
    assert tuple(batch["hr"].shape) == (3, 3, PATCH, PATCH) and batch["hr"].dtype == torch.float32
    assert batch["name"] == ["0001.png", "x.png", "0002.png"]


# ---------------------------------------------------------------- benchmark


def test_benchmark_with_hr_and_partial_lr(div2k: tuple[Path, Path], tmp_path: Path) -> None:
    hr_dir, lr_dir = div2k
    root = tmp_path / "benchmark"
    for p in hr_dir.iterdir():
        _png(_load(p), root / "Set3" / "HR" / p.name)
    for p in (lr_dir / "X4").iterdir():  # only X4 shipped: X2 must be generated
        _png(_load(p), root / "Set3" / "LR_bicubic" / "X4" / p.name)
    ds = BenchmarkDataset(root, "Set3", SCALE, cache_dir=tmp_path / "c")
    assert len(ds) == 3
    s = ds[0]
    assert s["set"] == "Set3" and s["name"] == "0001.png" and bool(s["paired"])
    hr = _mod(_load(hr_dir / "0001.png"))
    np.testing.assert_array_equal(_chw(s["hr"]), hr)
    np.testing.assert_array_equal(_chw(s["lr"][0]), _load(lr_dir / "X4" / "0001x4.png")[:25, :22])
    np.testing.assert_array_equal(_chw(s["lr"][1]), _pyramid(hr, SCALE)[1])
    batch = default_collate([s])
    assert batch["set"] == ["Set3"] and tuple(batch["hr"].shape) == (1, 3, 100, 88)


def test_benchmark_flat_folder_generates_pyramid(tmp_path: Path) -> None:
    for stem, hr in _crops().items():
        _png(hr, tmp_path / "photos" / f"{stem}.png")
    ds = BenchmarkDataset(tmp_path, "photos", 8, name="mine", cache_dir=tmp_path / "c", cache_in_memory=False)
    s = ds[2]
    hr = _mod(_crops()["0003"], 8)
    assert s["set"] == "mine"
    np.testing.assert_array_equal(_chw(s["hr"]), hr)
    for got, want in zip(s["lr"], _pyramid(hr, 8), strict=True):
        np.testing.assert_array_equal(_chw(got), want)
    missing = BenchmarkDataset(tmp_path, "Set99", 4)  # a missing set is found in setup (the DataModule warns)
    with pytest.raises(MissingFolder, match="^set_name='Set99': .*Set99 does not exist"):
        len(missing)
    with pytest.raises(MissingFolder, match="^root=.*nowhere.*does not exist"):
        BenchmarkDataset(tmp_path / "nowhere", "Set5", 4).setup()


def test_benchmark_with_another_degradation_ignores_the_bicubic_lr_files(
    div2k: tuple[Path, Path], tmp_path: Path
) -> None:
    """`degradation=nearest` scores on Nearest LR made from the HR, even where LR_bicubic files exist."""
    hr_dir, lr_dir = div2k
    root = tmp_path / "benchmark"
    for p in hr_dir.iterdir():
        _png(_load(p), root / "Set3" / "HR" / p.name)
    for p in (lr_dir / "X4").iterdir():
        _png(_load(p), root / "Set3" / "LR_bicubic" / "X4" / p.name)
    ds = BenchmarkDataset(root, "Set3", SCALE, degradation="nearest", cache_dir=tmp_path / "c")
    hr = _mod(_load(hr_dir / "0001.png"))
    np.testing.assert_array_equal(_chw(ds[0]["lr"][0]), hr[2::4, 2::4])  # MATLAB nearest keeps floor((i + 0.5) * 4)
    with pytest.raises(OptionError, match="degradation='jpeg'"):
        BenchmarkDataset(root, "Set3", SCALE, degradation="jpeg")


# ---------------------------------------------------------------- demo photos


def test_demo_split_is_disjoint_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(DEMO_TRAIN).isdisjoint(DEMO_VAL) and len(DEMO_VAL) == 2
    assert set(DEMO_TRAIN) | set(DEMO_VAL) == set(DEMO_FILES)
    import skimage

    wheel_dir = Path(skimage.__file__).parent / "data"

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("demo data must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in DEMO_FILES:
        assert demo_image_path(name).parent == wheel_dir
        img = load_demo_image(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert min(img.shape[:2]) >= 300
        chroma = np.abs(img.astype(int) - img.mean(axis=2, keepdims=True)).mean()
        if name in DEMO_GREYSCALE:
            assert chroma == 0, f"{name} is greyscale: its three channels must be equal"
        else:
            assert chroma > 2, f"{name} should be a colour photo"


def test_demo_photos_are_a_folder_made_on_first_use(tmp_path: Path) -> None:
    from drn_lightning.data import demo_photos

    train = demo_photos("train", tmp_path / "demo")
    assert train == tmp_path / "demo" / "train" and sorted(p.stem for p in train.iterdir()) == sorted(DEMO_TRAIN)
    assert demo_photos(None, tmp_path / "demo") == tmp_path / "demo"
    with pytest.raises(ValueError, match="split='test'"):
        demo_photos("test", tmp_path / "demo")
    ds = PairedDataset(lambda: demo_photos("val", tmp_path / "demo"), 2, 16)  # a folder given as a callable
    ds.setup()
    assert sorted(p.stem for p in ds.files) == sorted(DEMO_VAL)


def test_materialize_demo_idempotent(tmp_path: Path) -> None:
    dirs = materialize_demo(tmp_path / "demo")
    assert sorted(p.stem for p in dirs["train"].iterdir()) == sorted(DEMO_TRAIN)
    assert sorted(p.stem for p in dirs["val"].iterdir()) == sorted(DEMO_VAL)
    chelsea = dirs["val"] / "chelsea.png"
    np.testing.assert_array_equal(_load(chelsea), load_demo_image("chelsea"))
    before = {p: p.stat().st_mtime_ns for p in dirs["train"].iterdir()}
    assert materialize_demo(tmp_path / "demo") == dirs
    assert {p: p.stat().st_mtime_ns for p in dirs["train"].iterdir()} == before
    assert not list((tmp_path / "demo").rglob("*.tmp"))


def test_a_file_name_that_is_not_utf8_gets_an_lr_cache_entry(tmp_path: Path) -> None:
    """The LR cache key is made from the path's bytes, so a name that is not valid UTF-8 works (issue 15)."""
    folder = tmp_path / "hr"
    folder.mkdir()
    name = os.fsdecode(b"photo-\xff\xfe.png")  # undecodable bytes, kept as surrogates by Python
    _png(_crops()["0001"], folder / name)
    ds = PairedDataset(folder, SCALE, PATCH, cache_dir=tmp_path / "c")
    assert ds[0]["hr"].shape == (3, PATCH, PATCH)
    assert len(list((tmp_path / "c" / "lr_cache").iterdir())) == 2  # both LR levels cached
