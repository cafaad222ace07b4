"""SRDataModule: option validation, Hydra construction, batches, sharding, epochs, mid-epoch resume."""

from __future__ import annotations

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
from drn_lightning.ops.degrade import lr_pyramid

SCALE, PATCH = 4, 32


def _png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


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
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=False),
    )
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler
    assert isinstance(sampler, MixedBatchSampler)
    assert (sampler.rank, sampler.num_replicas, sampler.epoch) == (1, 2, 3)
    assert sum(not bool(p) for b in loader for p in b["paired"]) in range(4 * 2, 4 * 4 + 1)  # 6 per global batch
    val = dm.val_dataloader()
    assert [len(v) for v in val] == [1, 0]  # rank 1 of 2: Set3 item 1, Flat has only item 0
    dm.trainer.world_size, dm.trainer.global_rank = 2, 0  # type: ignore[union-attr]
    dm.trainer._accelerator_connector.use_distributed_sampler = True  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.train_dataloader()


def test_global_batch_is_split_across_ranks(data_root: Path) -> None:
    """`global_batch=true` (the paper configs): batch_size is the global batch, each of N ranks draws 1/N of it."""
    dm = _dm(data_root, batch_size=10, global_batch=True)
    for world, per_rank in ((1, 10), (2, 5)):
        dm.trainer = _fake_trainer(0, world)  # type: ignore[assignment]
        assert dm.train_dataloader().batch_sampler.batch_size == per_rank
    dm.trainer = _fake_trainer(0, 3)  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"batch_size=10 \(global_batch=true\) does not split over 3 ranks"):
        dm.train_dataloader()


def _fake_trainer(rank: int, world: int) -> SimpleNamespace:
    return SimpleNamespace(
        global_rank=rank,
        world_size=world,
        current_epoch=0,
        _accelerator_connector=SimpleNamespace(use_distributed_sampler=False),
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


def test_lightning_fit_sets_epoch_on_sampler(data_root: Path) -> None:
    dm = _dm(data_root, steps_per_epoch=2)
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
    trainer.fit(probe, datamodule=dm)
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
        ({"unpaired_ratio": 1.0}, r"^unpaired_ratio=1.0 must be in \[0, 1\)"),
        ({"unpaired_ratio": -0.2}, r"^unpaired_ratio=-0.2 must be in \[0, 1\)"),
        ({"patch_size": 30}, r"^patch_size=30 must be a positive multiple of scale=4"),
        ({"scale": 3, "patch_size": 30}, "scale must be a power of two"),
        ({"batch_size": 0}, r"^batch_size=0 must be an integer >= 1"),
        ({"unpaired": None}, r"^unpaired_ratio=0.3 > 0 needs an unpaired dataset"),
        ({"train": lambda root: _paired(root, lr_dirr="y")}, "unexpected keyword argument 'lr_dirr'"),
        ({"train": lambda root: partial(PairedDataset)}, "missing 1 required positional argument: 'hr_dir'"),
        ({"unpaired": lambda root: partial(UnpairedDataset, lr_dir="a", hr_dir="b")}, r"^unpaired\..*exactly one"),
        (
            {"unpaired": lambda root: partial(UnpairedDataset, hr_dir=str(root / "real_lr"), degradation="blur")},
            r"^unpaired\.degradation='blur'; allowed: bd, bicubic, nearest",
        ),
        (
            {"val_sets": lambda root: {"x": partial(BenchmarkDataset, root="x")}},
            "missing 1 required positional argument: 'set_name'",
        ),
        (
            {"train": lambda root: _paired(root, on_bad_file="ignore")},
            r"^train\.on_bad_file='ignore'; allowed: raise, skip",
        ),
    ],
)
def test_options_validated_up_front(data_root: Path, override: dict[str, Any], match: str) -> None:
    """Every option is checked, by the object it belongs to, before a dataset reads its folder; the message
    starts with the option (`train.` for a dataset's own), as the entry point names it under `data.`."""
    override = {k: v(data_root) if callable(v) and not isinstance(v, partial) else v for k, v in override.items()}
    with pytest.raises((ValueError, TypeError), match=match):
        _dm(data_root, **override)


def test_missing_paths_named(data_root: Path) -> None:
    missing = data_root / "no_such_dir"
    with pytest.raises(FileNotFoundError, match=r"^train.hr_dir: .*no_such_dir does not exist"):
        _dm(data_root, train=partial(PairedDataset, hr_dir=str(missing)))
    with pytest.raises(FileNotFoundError, match=r"^unpaired.lr_dir: .*no_such_dir"):
        _dm(data_root, unpaired=partial(UnpairedDataset, lr_dir=str(missing)))
    with pytest.raises(FileNotFoundError, match=r"^val_sets.B.set_name: .*no_such_dir"):
        _dm(data_root, val_sets={"B": partial(BenchmarkDataset, root=str(data_root), set_name="no_such_dir")})


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
        train=partial(PairedDataset, hr_dir=photos),
        unpaired=partial(UnpairedDataset, hr_dir=photos),
        val_sets={"demo": partial(BenchmarkDataset, root=partial(demo_photos, None, root), set_name="val")},
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
        train={"hr_dir": {"root": root}},
        val_sets={"demo": {"root": {"root": root}}},
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
