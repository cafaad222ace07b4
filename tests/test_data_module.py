"""SRDataModule: option validation, Hydra construction, batches, sharding, epochs, mid-epoch resume."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hydra.utils
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image

from drn_lightning.data import (
    DEMO_VAL,
    BenchmarkDataset,
    MixedBatchSampler,
    PairedDataset,
    SRDataModule,
    UnpairedDataset,
    demo_photos,
    load_demo_image,
)
from drn_lightning.data.datamodule import ResumableLoader, ShardSampler
from drn_lightning.data.datasets import MissingFolder
from drn_lightning.data.pyramid import LRCache, mod_crop
from drn_lightning.ops.degrade import lr_pyramid
from drn_lightning.options import OptionError

SCALE, PATCH = 4, 32


def _png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


@pytest.fixture(autouse=True)
def _user_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default cache folder ($XDG_CACHE_HOME/drn_lightning) in a temporary folder, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIV2K-style train set, a real-LR folder, and a Set-style benchmark folder."""
    root = tmp_path_factory.mktemp("data")
    astro, coffee = load_demo_image("astronaut"), load_demo_image("coffee")
    for k in range(4):
        hr = astro[60 * k : 60 * k + 96, 40 * k : 40 * k + 88]
        _png(hr, root / "train_HR" / f"{k:04d}.png")
        levels = lr_pyramid(torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))), SCALE)
        for f, lv in zip((4, 2), levels, strict=True):
            _png(lv.permute(1, 2, 0).numpy(), root / "train_LR" / f"X{f}" / f"{k:04d}x{f}.png")
    for k in range(3):
        _png(coffee[30 * k : 30 * k + 20, 50 * k : 50 * k + 24], root / "real_lr" / f"lr{k}.png")
    for k in range(3):
        _png(
            coffee[100 + 20 * k : 164 + 20 * k, 20 * k : 70 + 20 * k],
            root / "benchmark" / "Set3" / "HR" / f"img{k}.png",
        )
    _png(coffee[200:260, 300:360], root / "benchmark" / "Flat" / "one.png")
    return root


def _dm(root: Path, **kw: Any) -> SRDataModule:
    """The DataModule as a config builds it: dataset factories (Hydra `_partial_: true`) it calls itself."""
    base: dict[str, Any] = {
        "scale": SCALE,
        "patch_size": PATCH,
        "batch_size": 10,
        "train": partial(PairedDataset, hr_dir=str(root / "train_HR"), lr_dir=str(root / "train_LR")),
        "unpaired": partial(UnpairedDataset, lr_dir=str(root / "real_lr")),
        "unpaired_ratio": 0.3,
        "val_sets": {
            "Set3": partial(BenchmarkDataset, root=str(root / "benchmark"), set_name="Set3"),
            "flat": partial(BenchmarkDataset, root=str(root / "benchmark"), set_name="Flat", name="flat"),
        },
        "steps_per_epoch": 4,
        "num_workers": 0,
    }
    base.update(kw)
    return SRDataModule(**base)


# ---------------------------------------------------------------- batches


def test_mixed_batch_three_unpaired_of_ten(data_root: Path) -> None:
    dm = _dm(data_root)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    for batch in batches:
        paired = batch["paired"]
        assert paired.dtype == torch.bool and paired.shape == (10,)
        assert int((~paired).sum()) == 3
        assert [tuple(t.shape) for t in batch["lr"]] == [(10, 3, 8, 8), (10, 3, 16, 16)]
        assert tuple(batch["hr"].shape) == (10, 3, PATCH, PATCH)
        assert not batch["hr"][~paired].any() and not batch["lr"][1][~paired].any()
        assert batch["hr"][paired].flatten(1).amax(1).gt(0).all()
        assert all(n.startswith("lr") for n, p in zip(batch["name"], paired.tolist(), strict=True) if not p)


def test_paired_only_with_workers(data_root: Path) -> None:
    dm = _dm(data_root, unpaired=None, unpaired_ratio=0.0, batch_size=3, num_workers=2, steps_per_epoch=3)
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, MixedBatchSampler) and loader.num_workers == 2
    for _ in range(2):  # two passes through persistent workers
        batches = list(loader)
        assert len(batches) == 3 and all(bool(b["paired"].all()) for b in batches)
    assert dm.unpaired_dataset is None


def test_unpaired_given_but_ratio_zero_is_unused(data_root: Path) -> None:
    dm = _dm(data_root, unpaired_ratio=0.0)
    assert dm.unpaired_dataset is None
    assert all(bool(b["paired"].all()) for b in dm.train_dataloader())


def test_val_loaders_in_name_order(data_root: Path) -> None:
    dm = _dm(data_root)
    assert dm.val_set_names == ["Set3", "flat"]
    loaders = dm.val_dataloader()
    assert len(loaders) == 2
    first = list(loaders[0])
    assert len(first) == 3 and all(b["set"] == ["Set3"] for b in first)
    assert tuple(first[0]["hr"].shape) == (1, 3, 64, 68)  # 64 x 70 mod-cropped to 4
    assert [tuple(t.shape) for t in first[0]["lr"]] == [(1, 3, 16, 17), (1, 3, 32, 34)]
    assert [b["set"] for b in loaders[1]] == [["flat"]]


def test_shard_sampler_splits_without_duplicates() -> None:
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            shards = [list(ShardSampler(n, world, r)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert [len(ShardSampler(n, world, r)) for r in range(world)] == [len(s) for s in shards]


# ---------------------------------------------------------------- rank / epoch plumbing


def test_rank_world_epoch_from_trainer(data_root: Path) -> None:
    dm = _dm(data_root)
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=1,
        world_size=2,
        current_epoch=3,
    )
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    assert isinstance(sampler, MixedBatchSampler)
    assert (sampler.rank, sampler.num_replicas, sampler.epoch) == (1, 2, 3)
    assert sum(not bool(p) for b in loader for p in b["paired"]) in range(4 * 2, 4 * 4 + 1)  # 6 per global batch
    val = dm.val_dataloader()
    assert [len(v) for v in val] == [1, 0]  # rank 1 of 2: Set3 item 1, Flat has only item 0


def test_global_batch_is_split_across_ranks(data_root: Path) -> None:
    """`global_batch=true` (the paper configs): batch_size is the global batch, each of N ranks draws 1/N of it."""
    dm = _dm(data_root, batch_size=10, global_batch=True)
    for world, per_rank in ((1, 10), (2, 5)):
        dm.trainer = _fake_trainer(0, world)  # type: ignore[assignment]
        assert dm.train_dataloader().batch_sampler.batch_size == per_rank
    dm.trainer = _fake_trainer(0, 3)  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"batch_size=10: \(global_batch=true\) does not split over 3 ranks"):
        dm.train_dataloader()


def _fake_trainer(rank: int, world: int) -> SimpleNamespace:
    return SimpleNamespace(
        global_rank=rank,
        world_size=world,
        current_epoch=0,
    )


def _batches_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(
        x["name"] == y["name"] and torch.equal(x["hr"], y["hr"]) and all(map(torch.equal, x["lr"], y["lr"]))
        for x, y in zip(a, b, strict=True)
    )


def test_ddp_ranks_draw_their_own_crops(data_root: Path, tmp_path: Path) -> None:
    """Every rank seeds its global RNG alike (seed_everything); crops of the same image must still differ."""
    _png(load_demo_image("astronaut")[:160, :160], tmp_path / "one" / "0000.png")
    per_rank = []
    for rank in range(2):
        dm = _dm(
            data_root,
            train=partial(PairedDataset, hr_dir=str(tmp_path / "one"), samples_per_epoch=8),
            unpaired=None,
            unpaired_ratio=0.0,
            batch_size=2,
            steps_per_epoch=2,
        )
        dm.trainer = _fake_trainer(rank, 2)  # type: ignore[assignment]
        torch.manual_seed(0)
        per_rank.append(list(dm.train_dataloader()))
    patches = [b["hr"][k] for batches in per_rank for b in batches for k in range(2)]
    assert len(patches) == 8
    assert all(not torch.equal(patches[i], patches[j]) for i in range(8) for j in range(i))


def test_batches_do_not_depend_on_workers_or_on_earlier_batches(data_root: Path) -> None:
    """Keyed crops: 0 or 2 workers give the same tensors, and a resumed epoch repeats the uninterrupted tail."""
    runs = {}
    for workers in (0, 2):
        dm = _dm(data_root, num_workers=workers, steps_per_epoch=4)
        torch.manual_seed(workers)  # the global RNG plays no part
        loader = dm.train_dataloader()
        runs[workers] = list(loader)
        resumed = dm.train_dataloader()
        resumed.load_state_dict({"epoch": 0, "batches": 2})  # what Lightning restores from a checkpoint
        assert _batches_equal(list(resumed), runs[workers][2:])
    assert _batches_equal(runs[0], runs[2])
    assert int((~runs[0][0]["paired"]).sum()) == 3


class _Probe(pl.LightningModule):
    """Records what the sampler saw at each epoch start and what validation received."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.sampler_epochs: list[tuple[int, int]] = []
        self.unpaired_counts: list[int] = []
        self.val_sets: list[str] = []
        self.set_names: list[str] = []

    def setup(self, stage: str) -> None:  # as DRNLitModule.setup: after the DataModule's
        self.set_names = list(self.trainer.datamodule.val_set_names)

    def on_train_epoch_start(self) -> None:
        sampler = self.trainer.train_dataloader.batch_sampler
        self.sampler_epochs.append((self.current_epoch, sampler.epoch))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.unpaired_counts.append(int((~batch["paired"]).sum()))
        return (self.w * batch["hr"].mean()).sum()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.val_sets.append(batch["set"][0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_fit_sets_epoch_on_sampler(data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Also: a validation set whose folder is missing (Set5 without ../shared) is left out with a warning in setup,
    before the LightningModule's setup reads the set names its metrics are made for."""
    sets = {
        "Set3": partial(BenchmarkDataset, root=str(data_root / "benchmark"), set_name="Set3", cache_dir=tmp_path),
        "Set5": partial(BenchmarkDataset, root=str(tmp_path / "shared"), set_name="Set5"),
        "flat": partial(BenchmarkDataset, root=str(data_root / "benchmark"), set_name="Flat", name="flat"),
    }
    dm = _dm(data_root, steps_per_epoch=2, val_sets=sets)
    assert dm.val_set_names == ["Set3", "Set5", "flat"]  # from the config, no folder read
    probe = _Probe()
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
    )
    with caplog.at_level(logging.WARNING):
        trainer.fit(probe, datamodule=dm)
    (warning,) = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert warning.startswith("validation set Set5 left out: root=") and str(tmp_path / "shared") in warning
    assert probe.set_names == dm.val_set_names == ["Set3", "flat"]
    assert probe.sampler_epochs == [(0, 0), (1, 1), (2, 2)]
    assert probe.unpaired_counts == [3] * 6
    assert probe.val_sets.count("Set3") == 3 * 3 and probe.val_sets.count("flat") == 3


# ---------------------------------------------------------------- construction and validation


def test_hydra_instantiate_from_yaml(data_root: Path) -> None:
    cfg = OmegaConf.create(
        f"""
        _target_: drn_lightning.data.SRDataModule
        scale: 4
        patch_size: 32
        batch_size: 10
        train: {{_target_: drn_lightning.data.PairedDataset, _partial_: true, hr_dir: {data_root / "train_HR"},
                 lr_dir: {data_root / "train_LR"}, augment: false}}
        unpaired: {{_target_: drn_lightning.data.UnpairedDataset, _partial_: true, lr_dir: {data_root / "real_lr"}}}
        unpaired_ratio: 0.3
        val_sets:
          Set3: {{_target_: drn_lightning.data.BenchmarkDataset, _partial_: true, root: {data_root / "benchmark"},
                  set_name: Set3}}
        steps_per_epoch: 2
        num_workers: 0
        """
    )
    dm = hydra.utils.instantiate(cfg)
    assert isinstance(dm, SRDataModule) and dm.val_set_names == ["Set3"]
    batch = next(iter(dm.train_dataloader()))
    assert int((~batch["paired"]).sum()) == 3


def _paired(root: Path, **kw: Any) -> partial:
    return partial(PairedDataset, hr_dir=str(root / "train_HR"), lr_dir=str(root / "train_LR"), **kw)


@pytest.mark.parametrize(
    "override,match",
    [
        ({"unpaired_ratio": 1.0}, r"^unpaired_ratio=1.0: must be in \[0, 1\)"),
        ({"unpaired_ratio": -0.2}, r"^unpaired_ratio=-0.2: must be in \[0, 1\)"),
        ({"patch_size": 30}, r"^patch_size=30: must be a positive multiple of scale=4"),
        ({"scale": 3, "patch_size": 30}, r"^scale=3: must be a power of two"),
        ({"batch_size": 0}, r"^batch_size=0: must be an integer >= 1"),
        ({"unpaired": None}, r"^unpaired_ratio=0.3: > 0 needs an unpaired dataset"),
        ({"train": lambda root: _paired(root, lr_dirr="y")}, "unexpected keyword argument 'lr_dirr'"),
        ({"train": lambda root: partial(PairedDataset)}, "missing 1 required positional argument: 'hr_dir'"),
        ({"unpaired": lambda root: partial(UnpairedDataset, lr_dir="a", hr_dir="b")}, r"^lr_dir='a': .*exactly one"),
        (
            {"unpaired": lambda root: partial(UnpairedDataset, hr_dir=str(root / "real_lr"), degradation="blur")},
            r"^degradation='blur': allowed: bd, bicubic, nearest",
        ),
        (
            {"val_sets": lambda root: {"x": partial(BenchmarkDataset, root="x")}},
            "missing 1 required positional argument: 'set_name'",
        ),
        ({"train": lambda root: _paired(root, on_bad_file="ignore")}, r"^on_bad_file='ignore': allowed: raise, skip"),
        ({"train": lambda root: _paired(root, store="zip")}, r"^store='zip': allowed: png, npy"),
    ],
)
def test_options_validated_up_front(data_root: Path, override: dict[str, Any], match: str) -> None:
    """Every option is checked, by the object it belongs to, before a dataset reads its folder; an OptionError names
    the argument and its value as given, which the entry points re-key to the option as typed."""
    override = {k: v(data_root) if callable(v) and not isinstance(v, partial) else v for k, v in override.items()}
    with pytest.raises((ValueError, TypeError), match=match):
        _dm(data_root, **override)


def test_missing_training_folders_are_errors_naming_the_option(data_root: Path) -> None:
    missing = str(data_root / "no_such_dir")
    with pytest.raises(MissingFolder, match=r"^hr_dir='.*no_such_dir': does not exist; for DF2K:") as err:
        _dm(data_root, train=partial(PairedDataset, hr_dir=missing))
    assert (err.value.key, err.value.value) == ("hr_dir", missing)
    with pytest.raises(MissingFolder, match=r"^lr_dir='.*no_such_dir': does not exist$"):
        _dm(data_root, unpaired=partial(UnpairedDataset, lr_dir=missing))


def test_hydra_names_a_missing_training_folder_as_typed(data_root: Path) -> None:
    from drn_lightning.training.config import build

    missing = str(data_root / "no_such_dir")
    cfg = OmegaConf.create({"data": {
        "_target_": "drn_lightning.data.SRDataModule", "scale": 4, "patch_size": 32, "batch_size": 2,
        "train": {"_target_": "drn_lightning.data.PairedDataset", "_partial_": True, "hr_dir": missing},
    }})  # fmt: skip
    with pytest.raises(OptionError, match=rf"^data\.train\.hr_dir='{missing}': does not exist; for DF2K:"):
        build(cfg, "data")


def test_prepare_data_makes_a_missing_x8_level_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """DIV2K/DF2K ship X2, X3, X4 but no X8: prepare_data logs one line, then makes the x8 level of every image
    from the HR (MATLAB bicubic) in the cache, as the files `drn-sr data pyramid` and an HR-only dataset make."""
    from drn_lightning.data.prepare import pyramid

    photo = load_demo_image("astronaut")
    for k in range(3):
        hr = photo[70 * k : 70 * k + 83, 50 * k : 50 * k + 77]  # not multiples of 8
        _png(hr, tmp_path / "HR" / f"{k}.png")
        for f, level in zip((4, 2), lr_pyramid(torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))), 4)):
            _png(level.permute(1, 2, 0).numpy(), tmp_path / "LR" / f"X{f}" / f"{k}x{f}.png")
    dm = SRDataModule(8, 32, 2, partial(PairedDataset, hr_dir=tmp_path / "HR", lr_dir=tmp_path / "LR",
                                        cache_dir=tmp_path / "cache"), num_workers=0)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="drn_lightning.data"):
        dm.prepare_data()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "writing" in r.getMessage()]
    assert "x8" in line and "x4" not in line and "MATLAB bicubic" in line and str(tmp_path / "cache") in line
    made = sorted((tmp_path / "cache" / "lr_cache").iterdir())
    assert [p.name.split("__")[0] + p.name[-7:] for p in made] == ["0_x8.png", "1_x8.png", "2_x8.png"]
    pyramid(tmp_path / "HR", tmp_path / "by_drn_sr", [8], workers=1)
    only_hr = LRCache(tmp_path / "hr_only", 8)
    for k, path in enumerate(made):
        assert path.read_bytes() == (tmp_path / "by_drn_sr" / "X8" / f"{k}x8.png").read_bytes()
        hr_path = tmp_path / "HR" / f"{k}.png"
        only_hr.get(hr_path, mod_crop(np.asarray(Image.open(hr_path)), 8))
        assert path.read_bytes() == only_hr.paths(hr_path)[0].read_bytes()
    caplog.clear()
    before = [p.stat().st_mtime_ns for p in made]
    with caplog.at_level(logging.INFO, logger="drn_lightning.data"):
        dm.prepare_data()  # once: nothing left to make
        dm.setup("fit")
    assert not [r for r in caplog.records if r.name.startswith("drn_lightning.data")]
    assert [p.stat().st_mtime_ns for p in made] == before
    batch = next(iter(dm.train_dataloader()))
    assert [tuple(t.shape) for t in batch["lr"]] == [(2, 3, 4, 4), (2, 3, 8, 8), (2, 3, 16, 16)]


# ---------------------------------------------------------------- demo


def test_demo_datamodule_offline(tmp_path: Path) -> None:
    """The demo photos are datasets like any other: folders written on first use, held-out photos for validation."""
    root = str(tmp_path / "demo")
    photos = partial(demo_photos, "train", root)
    dm = SRDataModule(
        scale=2,
        patch_size=32,
        batch_size=4,
        unpaired_ratio=0.25,
        steps_per_epoch=2,
        num_workers=0,
        train=partial(PairedDataset, hr_dir=photos, cache_dir=tmp_path),
        unpaired=partial(UnpairedDataset, hr_dir=photos),
        val_sets={
            "demo": partial(BenchmarkDataset, root=partial(demo_photos, None, root), set_name="val", cache_dir=tmp_path)
        },
    )
    assert dm.val_set_names == ["demo"]
    batch = next(iter(dm.train_dataloader()))
    assert int((~batch["paired"]).sum()) == 1
    assert [tuple(t.shape) for t in batch["lr"]] == [(4, 3, 16, 16)]
    assert not set(batch["name"]) & {f"{n}.png" for n in DEMO_VAL}
    (val,) = dm.val_dataloader()
    assert sorted(b["name"][0] for b in val) == sorted(f"{n}.png" for n in DEMO_VAL)
    via_hydra = hydra.utils.instantiate(
        OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "demo.yaml"),
        scale=2,
        patch_size=32,
        seed=0,
        num_workers=0,
        train={"hr_dir": {"root": root}, "cache_dir": str(tmp_path)},
        val_sets={"demo": {"root": {"root": root}, "cache_dir": str(tmp_path)}},
    )
    assert via_hydra.val_set_names == ["demo"] and len(via_hydra.train_dataset) == 10


def test_resumable_loader_restarts_a_mismatched_epoch_and_reads_the_epoch_at_the_first_batch(data_root: Path) -> None:
    """A saved position applies once and only to its own epoch; the iterator reads the sampler's epoch at its
    first batch, because Lightning creates a resumed epoch's iterator before it calls set_epoch."""
    from lightning_fabric.utilities.data import _set_sampler_epoch

    def epoch(e: int) -> list[dict[str, Any]]:
        loader = _dm(data_root, steps_per_epoch=4).train_dataloader()
        loader.batch_sampler.set_epoch(e)
        return list(loader)

    loader = _dm(data_root, steps_per_epoch=4).train_dataloader()
    assert isinstance(loader, ResumableLoader)
    _set_sampler_epoch(loader, 1)
    assert _batches_equal(list(loader), epoch(1)) and loader.state_dict() == {"epoch": 1, "batches": 4}
    loader.load_state_dict({"epoch": 0, "batches": 3})  # stale: not the loader's epoch, so the epoch restarts
    assert _batches_equal(list(loader), epoch(1))
    loader.load_state_dict({"epoch": 2, "batches": 1})
    iterator = iter(loader)
    _set_sampler_epoch(loader, 2)
    assert _batches_equal(list(iterator), epoch(2)[1:]) and loader.state_dict() == {"epoch": 2, "batches": 4}
    assert _batches_equal(list(loader), epoch(2))  # the position applied once
