"""Lightning DataModule wiring the folder datasets, the mixed sampler and the validation sets.

Built by Hydra from YAML with one ``_target_``; every argument is a plain value or mapping::

    _target_: drn_lightning.data.SRDataModule
    scale: 4
    patch_size: 96
    batch_size: 16
    train: {hr_dir: /data/DIV2K/DIV2K_train_HR, lr_dir: /data/DIV2K/DIV2K_train_LR_bicubic}
    unpaired: {lr_dir: /data/real_lr}          # or {hr_dir: ..., degradation: nearest}
    unpaired_ratio: 0.3
    val_sets: [/data/benchmark/Set5, {root: /data/benchmark, set_name: Set14}, {demo: true}]

``{demo: true}`` in ``train``, ``unpaired`` or a val set stands for the scikit-image demo photos
(see :mod:`drn_lightning.data.demo`), materialised under ``demo_root``.

DDP: the train loader's :class:`MixedBatchSampler` shards each global batch itself, so the
Trainer must run with ``use_distributed_sampler=False``. Rank and world size are read from the
attached trainer when ``train_dataloader()`` builds the loader; the epoch reaches the sampler
through Lightning's own per-epoch ``set_epoch`` call (it calls
``dataloader.batch_sampler.sampler.set_epoch``, which the sampler routes to itself). Batch
samplers run in the main process, never in workers, so this holds with persistent workers and
needs no ``reload_dataloaders_every_n_epochs``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from drn_lightning.data.datasets import BenchmarkDataset, KeyedConcatDataset, PairedDataset, UnpairedDataset
from drn_lightning.data.demo import DEMO_FILES, default_demo_root, demo_image_path, materialize_demo
from drn_lightning.data.io import ON_BAD_FILE_CHOICES
from drn_lightning.data.samplers import MixedBatchSampler

__all__ = ["DemoDataModule", "SRDataModule", "ShardSampler"]

log = logging.getLogger(__name__)

SCALES = (2, 4, 8)
_COMMON_KEYS = {"augment", "samples_per_epoch", "on_bad_file", "cache_in_memory", "max_pixels", "demo"}
_TRAIN_KEYS = {"hr_dir", "lr_dir", "lr_cache_dir"} | _COMMON_KEYS
_UNPAIRED_KEYS = {"hr_dir", "lr_dir", "degradation"} | _COMMON_KEYS
_VAL_KEYS = {"path", "root", "set_name", "name", "lr_cache_dir", "cache_in_memory", "on_bad_file", "max_pixels", "demo"}
_DEMO_VAL_NAME = "demo"


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: each item on exactly one rank, no padding duplicates.

    Used for whole-image validation (batch 1) so DDP ranks split the work without the repeated
    items ``DistributedSampler`` pads with, which would bias the mean. Ranks may get one item
    fewer than others; metrics that sync sums/counts (torchmetrics) still give the exact mean.
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        """Remember the set size and this rank's position."""
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.length, self.num_replicas, self.rank = int(length), int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[int]:
        """This rank's indices in order."""
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        """How many items this rank evaluates."""
        return len(range(self.rank, self.length, self.num_replicas))


def _plain(value: Any) -> Any:
    """Turn DictConfig/ListConfig (or any Mapping/Sequence) into plain dicts/lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def _int_option(value: Any, name: str, minimum: int) -> int:
    """An integer option at or above ``minimum``, with an error naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _mapping_option(value: Any, name: str, allowed: set[str]) -> dict[str, Any]:
    """A config mapping with only known keys, so a typo fails at construction, not mid-run."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping (e.g. {{hr_dir: ...}} or {{demo: true}}), got {value!r}")
    cfg = _plain(value)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    if "on_bad_file" in cfg and cfg["on_bad_file"] not in ON_BAD_FILE_CHOICES:
        raise ValueError(f"{name}.on_bad_file must be one of {list(ON_BAD_FILE_CHOICES)}, got {cfg['on_bad_file']!r}")
    return cfg


def _existing_dir(value: Any, option: str) -> str:
    """A folder option that must exist now; the error names the option and the path."""
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{option}: {path} {what}")
    return str(path)


def _check_demo_available() -> None:
    """Fail at construction if the scikit-image wheel lacks a demo photo."""
    for name in DEMO_FILES:
        demo_image_path(name)


class SRDataModule(pl.LightningDataModule):
    """DRN data: paired (+ optional unpaired) training patches and whole-image validation sets."""

    def __init__(
        self,
        scale: int,
        patch_size: int,
        batch_size: int,
        train: Mapping[str, Any],
        unpaired: Mapping[str, Any] | None = None,
        unpaired_ratio: float = 0.0,
        val_sets: Sequence[Mapping[str, Any] | str] = (),
        steps_per_epoch: int = 1000,
        num_workers: int = 2,
        pin_memory: bool = True,
        seed: int = 0,
        persistent_workers: bool = True,
        val_num_workers: int | None = None,
        demo_root: str | None = None,
    ) -> None:
        """Validate every option now (errors name the option); datasets are built in ``setup()``."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        if isinstance(scale, bool) or scale not in SCALES:
            raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
        self.scale = int(scale)
        self.patch_size = _int_option(patch_size, "patch_size", 1)
        if self.patch_size % self.scale:
            raise ValueError(
                f"patch_size ({patch_size}) must be a multiple of scale ({scale}) so every LR level "
                "gets a whole-pixel patch"
            )
        self.batch_size = _int_option(batch_size, "batch_size", 1)
        self.steps_per_epoch = _int_option(steps_per_epoch, "steps_per_epoch", 1)
        self.num_workers = _int_option(num_workers, "num_workers", 0)
        self.val_num_workers = (
            self.num_workers if val_num_workers is None else _int_option(val_num_workers, "val_num_workers", 0)
        )
        self.seed = _int_option(seed, "seed", 0)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        try:
            ratio = float(unpaired_ratio)
        except (TypeError, ValueError):
            raise ValueError(f"unpaired_ratio must be a number in [0, 1), got {unpaired_ratio!r}") from None
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"unpaired_ratio must be in [0, 1), got {unpaired_ratio!r}")
        self.unpaired_ratio = ratio
        self.demo_root = str(Path(demo_root).expanduser()) if demo_root else str(default_demo_root())

        self.train_cfg = self._check_train(_mapping_option(train, "train", _TRAIN_KEYS), "train")
        self.unpaired_cfg: dict[str, Any] | None = None
        if unpaired is not None:
            self.unpaired_cfg = self._check_unpaired(_mapping_option(unpaired, "unpaired", _UNPAIRED_KEYS))
        if ratio > 0 and self.unpaired_cfg is None:
            raise ValueError(f"unpaired_ratio={ratio} > 0 needs an `unpaired` data config")
        if ratio == 0 and self.unpaired_cfg is not None:
            log.info("unpaired data given but unpaired_ratio is 0: it will not be used")

        if isinstance(val_sets, str | bytes) or not isinstance(val_sets, Sequence):
            raise ValueError(f"val_sets must be a list of folders or mappings, got {val_sets!r}")
        self.val_cfgs = [self._check_val(_plain(v), f"val_sets[{i}]") for i, v in enumerate(val_sets)]
        names = [c["name"] for c in self.val_cfgs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"val_sets names must be unique (they key the metrics), duplicated: {duplicates}")
        self.val_set_names: list[str] = names

        self.paired_dataset: PairedDataset | None = None
        self.unpaired_dataset: UnpairedDataset | None = None
        self.val_datasets: list[BenchmarkDataset] = []

    # ------------------------------------------------------------------ config checks

    def _uses_demo(self) -> bool:
        """Whether any part of the config asks for the demo photos."""
        cfgs = [self.train_cfg, self.unpaired_cfg or {}, *self.val_cfgs]
        return any(c.get("demo") for c in cfgs)

    def _check_train(self, cfg: dict[str, Any], name: str) -> dict[str, Any]:
        """Paired config: demo, or an existing hr_dir (+ lr_dir)."""
        if cfg.get("demo"):
            if cfg.get("hr_dir") or cfg.get("lr_dir"):
                raise ValueError(f"{name}: give either demo: true or hr_dir/lr_dir, not both")
            _check_demo_available()
            return cfg
        if not cfg.get("hr_dir"):
            raise ValueError(f"{name}.hr_dir is required (or set {name}.demo: true)")
        cfg["hr_dir"] = _existing_dir(cfg["hr_dir"], f"{name}.hr_dir")
        if cfg.get("lr_dir"):
            cfg["lr_dir"] = _existing_dir(cfg["lr_dir"], f"{name}.lr_dir")
            for k in range(self.scale.bit_length() - 1):
                _existing_dir(Path(cfg["lr_dir"]) / f"X{self.scale >> k}", f"{name}.lr_dir (x{self.scale >> k} level)")
        return cfg

    def _check_unpaired(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Unpaired config: demo (degraded demo photos), lr_dir, or hr_dir + degradation."""
        from drn_lightning.ops.degrade import DEGRADATIONS

        if "degradation" in cfg and cfg["degradation"] not in DEGRADATIONS:
            raise ValueError(f"unpaired.degradation must be one of {sorted(DEGRADATIONS)}, got {cfg['degradation']!r}")
        sources = [k for k in ("demo", "hr_dir", "lr_dir") if cfg.get(k)]
        if len(sources) != 1:
            raise ValueError(f"unpaired needs exactly one of demo: true, hr_dir or lr_dir, got {sources or 'none'}")
        if cfg.get("demo"):
            _check_demo_available()
        else:
            key = sources[0]
            cfg[key] = _existing_dir(cfg[key], f"unpaired.{key}")
        return cfg

    def _check_val(self, entry: Any, name: str) -> dict[str, Any]:
        """Val set: a folder path, {root, set_name}, {path}, or {demo: true}; resolves a display name."""
        if isinstance(entry, str):
            entry = {"path": entry}
        cfg = _mapping_option(entry, name, _VAL_KEYS)
        if cfg.get("demo"):
            _check_demo_available()
            cfg.setdefault("name", _DEMO_VAL_NAME)
            return cfg
        if cfg.get("path"):
            if cfg.get("root") or cfg.get("set_name"):
                raise ValueError(f"{name}: give either path or root + set_name, not both")
            folder = Path(_existing_dir(cfg.pop("path"), f"{name}.path"))
            cfg["root"], cfg["set_name"] = str(folder.parent), folder.name
        elif cfg.get("root") and cfg.get("set_name"):
            _existing_dir(Path(str(cfg["root"])).expanduser() / str(cfg["set_name"]), f"{name} (root/set_name)")
            cfg["root"] = str(Path(str(cfg["root"])).expanduser())
        else:
            raise ValueError(f"{name} needs path, root + set_name, or demo: true; got {sorted(cfg)}")
        cfg.setdefault("name", str(cfg["set_name"]))
        return cfg

    # ------------------------------------------------------------------ data building

    def prepare_data(self) -> None:
        """Write the demo photos once per node before any rank reads them."""
        if self._uses_demo():
            materialize_demo(self.demo_root)

    def _demo_dirs(self) -> dict[str, Path]:
        """Demo train/val folders (idempotent, safe if prepare_data already ran)."""
        return materialize_demo(self.demo_root)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets this stage needs (once; later calls reuse them)."""
        if stage in (None, "fit") and self.paired_dataset is None:
            self.paired_dataset = self._build_paired()
            if self.unpaired_cfg is not None and self.unpaired_ratio > 0:
                self.unpaired_dataset = self._build_unpaired()
        if stage in (None, "fit", "validate", "test") and not self.val_datasets:
            self.val_datasets = [self._build_val(c) for c in self.val_cfgs]

    def _build_paired(self) -> PairedDataset:
        """PairedDataset from the train config."""
        cfg = dict(self.train_cfg)
        if cfg.pop("demo", False):
            cfg["hr_dir"] = str(self._demo_dirs()["train"])
        return PairedDataset(scale=self.scale, patch_size=self.patch_size, **cfg)

    def _build_unpaired(self) -> UnpairedDataset:
        """UnpairedDataset from the unpaired config (demo = degraded demo train photos)."""
        assert self.unpaired_cfg is not None
        cfg = dict(self.unpaired_cfg)
        if cfg.pop("demo", False):
            cfg["hr_dir"] = str(self._demo_dirs()["train"])
        return UnpairedDataset(scale=self.scale, patch_size=self.patch_size, **cfg)

    def _build_val(self, cfg: dict[str, Any]) -> BenchmarkDataset:
        """BenchmarkDataset for one val entry (demo = held-out demo photos)."""
        cfg = dict(cfg)
        if cfg.pop("demo", False):
            val_dir = self._demo_dirs()["val"]
            cfg["root"], cfg["set_name"] = str(val_dir.parent), val_dir.name
        return BenchmarkDataset(scale=self.scale, **cfg)

    # ------------------------------------------------------------------ loaders

    def _dist(self) -> tuple[int, int]:
        """(global rank, world size) from the attached trainer, else (0, 1)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def _check_trainer_sampler_flag(self, world: int) -> None:
        """Lightning must not wrap our own sharding sampler in a DistributedSampler."""
        connector = getattr(self.trainer, "_accelerator_connector", None)
        if world > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError(
                "SRDataModule shards batches itself; create the Trainer with use_distributed_sampler=False"
            )

    def _worker_kwargs(self, num_workers: int) -> dict[str, Any]:
        """Shared DataLoader options; pin memory only when there is a GPU to pin for."""
        kwargs: dict[str, Any] = {
            "num_workers": num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
        }
        if num_workers > 0:
            kwargs["persistent_workers"] = self.persistent_workers
        return kwargs

    def train_sampler(self) -> MixedBatchSampler:
        """The batch sampler for this rank, positioned at the trainer's current epoch."""
        if self.paired_dataset is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        rank, world = self._dist()
        sampler = MixedBatchSampler(
            n_paired=len(self.paired_dataset),
            n_unpaired=len(self.unpaired_dataset) if self.unpaired_dataset is not None else 0,
            batch_size=self.batch_size,
            unpaired_ratio=self.unpaired_ratio,
            num_batches=self.steps_per_epoch,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            keyed=True,
        )
        if self.trainer is not None:
            sampler.set_epoch(int(self.trainer.current_epoch))
        return sampler

    def train_dataset(self) -> ConcatDataset[Any]:
        """``ConcatDataset([paired, unpaired])`` the sampler's ``(index, seed)`` keys refer to."""
        if self.paired_dataset is None:
            raise RuntimeError("call setup('fit') before train_dataset()")
        parts: list[Dataset[Any]] = [self.paired_dataset]
        if self.unpaired_dataset is not None:
            parts.append(self.unpaired_dataset)
        return KeyedConcatDataset(parts)

    def train_dataloader(self) -> DataLoader[Any]:
        """Mixed paired/unpaired batches, sharded per rank by the sampler; default collate."""
        rank, world = self._dist()
        self._check_trainer_sampler_flag(world)
        generator = torch.Generator()
        # Crops and flips come from each sample's key; this only seeds the workers' global RNGs per rank.
        generator.manual_seed(self.seed * 100_003 + rank)
        return DataLoader(
            self.train_dataset(),
            batch_sampler=self.train_sampler(),
            generator=generator,
            **self._worker_kwargs(self.num_workers),
        )

    def _eval_loaders(self) -> list[DataLoader[Any]]:
        """One batch-1 loader per val set, sharded over ranks without duplicates."""
        rank, world = self._dist()
        if not self.val_datasets and self.val_cfgs:
            self.setup("validate")
        return [
            DataLoader(
                ds,
                batch_size=1,
                sampler=ShardSampler(len(ds), world, rank),
                **self._worker_kwargs(min(self.val_num_workers, max(len(ds), 1))),
            )
            for ds in self.val_datasets
        ]

    def val_dataloader(self) -> list[DataLoader[Any]]:
        """Validation loaders in the order of ``val_set_names``."""
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader[Any]]:
        """Same sets as validation, for ``trainer.test``."""
        return self._eval_loaders()


class DemoDataModule(SRDataModule):
    """Offline demo: train on the scikit-image photos, validate on the held-out two (one _target_)."""

    def __init__(
        self,
        scale: int = 4,
        patch_size: int = 96,
        batch_size: int = 16,
        unpaired_ratio: float = 0.0,
        degradation: str = "nearest",
        steps_per_epoch: int = 1000,
        num_workers: int = 2,
        pin_memory: bool = True,
        seed: int = 0,
        persistent_workers: bool = True,
        val_num_workers: int | None = None,
        demo_root: str | None = None,
        augment: bool = True,
    ) -> None:
        """SRDataModule with train/unpaired/val all pointing at the demo photos."""
        super().__init__(
            scale=scale,
            patch_size=patch_size,
            batch_size=batch_size,
            train={"demo": True, "augment": augment},
            unpaired=(
                {"demo": True, "degradation": degradation, "augment": augment}
                if isinstance(unpaired_ratio, int | float) and unpaired_ratio > 0
                else None
            ),
            unpaired_ratio=unpaired_ratio,
            val_sets=[{"demo": True}],
            steps_per_epoch=steps_per_epoch,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
            persistent_workers=persistent_workers,
            val_num_workers=val_num_workers,
            demo_root=demo_root,
        )

