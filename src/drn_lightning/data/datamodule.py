"""The Lightning DataModule: training batches mixing paired and unpaired samples at an exact ratio, and whole-image
validation sets, from the dataset factories a config names (`conf/data/*.yaml`, `_partial_: true`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from drn_lightning.data.datasets import MissingFolder
from drn_lightning.data.samplers import KeyedConcatDataset, MixedBatchSampler
from drn_lightning.options import OptionError, fraction, integer

log = logging.getLogger(__name__)

DatasetFactory = Callable[..., Dataset[Any]]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: each item on exactly one rank, without the duplicates `DistributedSampler`
    pads with, which would bias the validation mean (torchmetrics syncs sums and counts, so it stays exact)."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.indices = range(int(rank), int(length), int(num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ResumableLoader(DataLoader[Any]):
    """The train loader Lightning resumes mid-epoch: its state is (epoch, batches yielded; Lightning does not look
    ahead in a sized loader, so that is batches trained on), and its sampler restarts the epoch there (`start_at`)."""

    batch_sampler: MixedBatchSampler
    _yielded = 0
    _resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        """A generator, so it reads the sampler's epoch at the first batch: Lightning calls set_epoch after iter()."""
        start, self._resume = self._resume, None
        self._yielded, epoch = 0, self.batch_sampler.epoch
        if start is not None and start["batches"] < len(self.batch_sampler):  # else saved at its epoch's end
            if start["epoch"] == epoch:
                self._yielded = start["batches"]
                self.batch_sampler.start_at(self._yielded)
                log.info("resume: skipping the %d batches of epoch %d already trained on", self._yielded, epoch)
            else:
                log.warning(
                    "resume: the checkpoint is in epoch %d, the loader in %d; the epoch restarts", start["epoch"], epoch
                )
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the epoch stands, saved in every checkpoint by Lightning's fit loop."""
        return {"epoch": int(self.batch_sampler.epoch), "batches": int(self._yielded)}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        """Called by Lightning before the resumed epoch's iterator is created."""
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}


class SRDataModule(pl.LightningDataModule):
    """DRN data: paired (+ optional unpaired) training patches and whole-image validation sets."""

    def __init__(
        self,
        scale: int,
        patch_size: int,
        batch_size: int,
        train: DatasetFactory | Dataset[Any],
        unpaired: DatasetFactory | Dataset[Any] | None = None,
        unpaired_ratio: float = 0.0,
        val_sets: Mapping[str, DatasetFactory | Dataset[Any]] | None = None,
        steps_per_epoch: int = 1000,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        val_num_workers: int | None = None,
        global_batch: bool = False,
    ) -> None:
        """Check the options, then build the datasets (which check theirs; folders are read in setup)."""
        super().__init__()
        self.batch_size = integer(batch_size, "batch_size", 1)
        self.global_batch = bool(global_batch)  # batch_size is split across DDP ranks (the paper's 32 in all)
        self.steps_per_epoch = integer(steps_per_epoch, "steps_per_epoch", 1)
        self.num_workers = integer(num_workers, "num_workers", 0)
        self.val_num_workers = (
            self.num_workers if val_num_workers is None else integer(val_num_workers, "val_num_workers", 0)
        )
        self.seed = integer(seed, "seed", 0)
        self.unpaired_ratio = fraction(unpaired_ratio, "unpaired_ratio")
        if self.unpaired_ratio > 0 and unpaired is None:
            raise OptionError("unpaired_ratio", unpaired_ratio, "> 0 needs an unpaired dataset (unpaired: ...)")
        self.pin_memory, self.persistent_workers = bool(pin_memory), bool(persistent_workers)
        self.patch_size = patch_size  # HR pixels; the datasets check it
        build = {"scale": scale, "patch_size": patch_size}  # what the factories (`_partial_: true`) are called with
        self.train_dataset = train(**build) if callable(train) else train
        self.unpaired_dataset: Dataset[Any] | None = None
        if unpaired is not None and self.unpaired_ratio > 0:
            self.unpaired_dataset = unpaired(**build) if callable(unpaired) else unpaired
        elif unpaired is not None:
            log.info("unpaired data given but unpaired_ratio is 0: it is not used")
        self._train_loader: ResumableLoader | None = None
        self._resume: dict[str, int] | None = None
        self.val_datasets: dict[str, Dataset[Any]] = {}
        for name, val_set in (val_sets or {}).items():
            if val_set is None:  # an entry set to null is left out
                continue
            built = val_set(scale=scale) if callable(val_set) else val_set
            degradation = getattr(built, "degradation", "bicubic")  # named `Set5_nearest` for LR made another way
            suffix = "" if degradation == "bicubic" or name.endswith(f"_{degradation}") else f"_{degradation}"
            self.val_datasets[name + suffix] = built

    def _call(self, hook: str) -> None:
        """`hook` of every dataset having it; a validation set whose folder is missing is left out with a warning."""
        for ds in (self.train_dataset, self.unpaired_dataset):
            getattr(ds, hook, lambda: None)()
        for name, ds in list(self.val_datasets.items()):
            try:
                getattr(ds, hook, lambda: None)()
            except MissingFolder as err:
                log.warning("validation set %s left out: %s", name, err)
                del self.val_datasets[name]

    def prepare_data(self) -> None:
        """On local rank 0, before setup: write missing LR levels (MATLAB bicubic) and the npy store, with progress."""
        self._call("prepare")

    def setup(self, stage: str | None = None) -> None:
        """On every rank: list and check the folders (idempotent); the LightningModule reads `val_set_names` after."""
        self._call("setup")

    @property
    def val_set_names(self) -> list[str]:
        """In loader order, keying the logged metrics (`val/<name>/psnr`); setup drops a set whose folder is missing."""
        return list(self.val_datasets)

    def _rank_and_world(self) -> tuple[int, int]:
        """Our samplers shard the data themselves: the Trainer runs with ``use_distributed_sampler=False``."""
        trainer = self.trainer
        return (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))

    def _loader_options(self, num_workers: int) -> dict[str, Any]:
        """Shared DataLoader options; pin memory only when there is a GPU to pin for."""
        persistent = {"persistent_workers": self.persistent_workers} if num_workers > 0 else {}
        return {"num_workers": num_workers, "pin_memory": self.pin_memory and torch.cuda.is_available(), **persistent}

    def train_dataloader(self) -> ResumableLoader:
        """Mixed paired/unpaired batches, sharded per rank; crops and flips come from each sample's seed."""
        rank, world = self._rank_and_world()
        parts = [self.train_dataset] + ([self.unpaired_dataset] if self.unpaired_dataset is not None else [])
        if self.global_batch and self.batch_size % world:
            raise OptionError("batch_size", self.batch_size, f"(global_batch=true) does not split over {world} ranks")
        sampler = MixedBatchSampler(
            n_paired=len(self.train_dataset),  # type: ignore[arg-type]
            n_unpaired=len(self.unpaired_dataset) if self.unpaired_dataset is not None else 0,  # type: ignore[arg-type]
            batch_size=self.batch_size // world if self.global_batch else self.batch_size,
            unpaired_ratio=self.unpaired_ratio,
            num_batches=self.steps_per_epoch,
            num_replicas=world,
            rank=rank,
            seed=self.seed,
            keyed=True,
        )
        if self.trainer is not None:
            sampler.set_epoch(int(self.trainer.current_epoch))
            # debug=overfit: the same batches every epoch
            sampler.repeat_epoch = bool(getattr(self.trainer, "overfit_batches", 0))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + rank)  # seeds the workers' global RNGs only
        loader = ResumableLoader(
            KeyedConcatDataset(parts),
            batch_sampler=sampler,
            generator=generator,
            **self._loader_options(self.num_workers),
        )
        if self._resume is not None:
            loader.load_state_dict(self._resume)
            self._resume = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, int]:
        """The train loader's place in its epoch; Lightning saves it in every checkpoint."""
        return self._train_loader.state_dict() if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored before `estimated_stepping_batches` builds the train loader, unlike the fit loop's copy of it."""
        self._resume = dict(state_dict) if state_dict else None

    def val_dataloader(self) -> list[DataLoader[Any]]:
        """One batch-1 loader per validation set, in `val_set_names` order, split over ranks without duplicates."""
        rank, world = self._rank_and_world()
        return [
            DataLoader(
                ds,
                batch_size=1,
                sampler=ShardSampler(len(ds), world, rank),  # type: ignore[arg-type]
                **self._loader_options(min(self.val_num_workers, max(len(ds), 1))),  # type: ignore[arg-type]
            )
            for ds in self.val_datasets.values()
        ]

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A fully paired batch drops its `paired` mask so the loss skips masking; read on the CPU, saving a GPU sync."""
        if isinstance(batch, dict) and isinstance(batch.get("paired"), torch.Tensor) and bool(batch["paired"].all()):
            batch = {**batch, "paired": None}
        return batch

    def test_dataloader(self) -> list[DataLoader[Any]]:
        """Same sets as validation, for ``trainer.test``."""
        return self.val_dataloader()
