"""Lightning callbacks: validation image grids, checkpoints that stay in their folder, the preemption checkpoint."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint, RichProgressBar
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor

from drn_lightning.ops.imresize import imresize

log = logging.getLogger(__name__)


def main_checkpoint(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The first ModelCheckpoint (the run's `checkpoint` callback); OnExceptionCheckpoint is a Checkpoint too."""
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)


def checkpoint_folder(trainer: pl.Trainer) -> str:
    """Where `last.ckpt` lives: the first ModelCheckpoint's folder, else Lightning's default (maybe an fsspec URL)."""
    main = main_checkpoint(trainer)
    return str((main and main.dirpath) or os.path.join(trainer.default_root_dir, "checkpoints"))


def make_comparison_grid(lr: Tensor, sr: Tensor, hr: Tensor, scale: int, crop_size: int = 24) -> np.ndarray:
    """LR (nearest) | bicubic | SR | HR on top, the same zoomed centre crop below; uint8 HxWx3."""
    lr, sr, hr = lr[:1].float(), sr[:1].float(), hr[:1].float()
    height, width = hr.shape[-2:]
    panels = [
        F.interpolate(lr, size=(height, width), mode="nearest"),
        imresize(lr, scale=scale)[..., :height, :width],
        sr[..., :height, :width],
        hr,
    ]
    size = min(crop_size * scale, height, width)
    top, left = (height - size) // 2, (width - size) // 2
    zoom = max(1, width // max(size, 1))  # blow each crop up to about one panel's width
    crops = [
        F.interpolate(p[..., top : top + size, left : left + size], scale_factor=zoom, mode="nearest") for p in panels
    ]
    top_row, bottom_row = torch.cat(panels, dim=-1), torch.cat(crops, dim=-1)
    bottom_row = F.pad(bottom_row, (0, top_row.shape[-1] - bottom_row.shape[-1]))  # the crops are never wider
    grid = torch.cat([top_row, bottom_row], dim=-2)[0]
    return grid.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class ImageGridLogger(pl.Callback):
    """Logs LR | bicubic | SR | HR grids of the first validation images, so progress can be seen, not just read."""

    def __init__(self, every_n_epochs: int = 1, max_images: int = 2, crop_size: int = 24) -> None:
        super().__init__()
        self.every_n_epochs, self.max_images, self.crop_size = every_n_epochs, max_images, crop_size
        self._grids: list[tuple[str, np.ndarray]] = []

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        due = self.every_n_epochs > 0 and trainer.current_epoch % self.every_n_epochs == 0
        if not due or not trainer.is_global_zero or trainer.sanity_checking or dataloader_idx != 0:
            return
        if len(self._grids) < self.max_images:  # validation runs without gradients already
            lr, name = batch["lr"][0], batch.get("name", [f"image{batch_idx}"])
            name = name[0] if isinstance(name, list | tuple) else name
            grid = make_comparison_grid(lr, pl_module(lr)[-1], batch["hr"], int(pl_module.scale), self.crop_size)
            self._grids.append((Path(str(name)).stem, grid))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        grids, self._grids = self._grids, []
        step = trainer.global_step
        for logger in trainer.loggers:
            for name, grid in grids:
                if isinstance(logger, WandbLogger):  # one key per image: W&B wants equal sizes within one key
                    logger.log_image(f"val/images/{name}", [grid], step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image(f"val/{name}", grid, step, dataformats="HWC")
                else:
                    folder = Path(logger.log_dir or trainer.default_root_dir) / "images"
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(grid).save(folder / f"{name}_step{step:07d}.png")


class ProgressBar(RichProgressBar):
    """Rich progress bar without the logger's `v_num`, which reads `0.000` beside the loss."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that forgets restored paths outside `dirpath` and writes `last` whenever a fit ends."""

    def __init__(self, *args: Any, save_on_train_end: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_on_train_end = save_on_train_end  # False: a periodic last.ckpt beside the main callback's

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final state, so an uninterrupted run and a resumed one end alike (Lightning: only if none was saved)."""
        if self.save_on_train_end and self.save_last:
            self.last_model_path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
            trainer.save_checkpoint(self.last_model_path, self.save_weights_only)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.restored_from = trainer.ckpt_path  # the file whose state load_state_dict receives next, for its warning

    def _inside(self, path: Any) -> bool:
        """Whether `path` is strictly inside this callback's folder, symlinks and `..` resolved."""
        if not isinstance(path, str) or not path or self.dirpath is None:
            return False
        folder, target = os.path.realpath(self.dirpath), os.path.realpath(path)
        return target != folder and os.path.commonpath([folder, target]) == folder

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state, dropped = dict(state_dict), []  # what it later deletes must be inside its folder
        for key in ("best_model_path", "last_model_path"):
            if state.get(key) and not self._inside(state[key]):
                dropped.append(state[key])
                state[key] = ""
        top_k = [state.get("kth_best_model_path"), *dict(state.get("best_k_models") or {})]
        if any(p and not self._inside(p) for p in top_k):  # forget the whole top-k list, never half of it
            dropped += [p for p in top_k if p and not self._inside(p)]
            state.update(best_k_models={}, kth_best_model_path="", best_model_score=None)
            state.pop("kth_value", None)
        if dropped:
            source = getattr(self, "restored_from", None) or "checkpoint"
            log.warning("%s: ignored paths outside the checkpoint folder %s: %s", source, self.dirpath, dropped)
        super().load_state_dict(state)


class PreemptionCheckpoint(OnExceptionCheckpoint):
    """SIGTERM or `signals`: `last.ckpt` at the next step boundary, then the replaced handler (docs/reliability.md)."""

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "last",
        signals: Sequence[str] = ("SIGUSR1", "SIGUSR2"),
    ) -> None:
        super().__init__(str(dirpath or ""), filename)
        self.signals = [signal.Signals[name] for name in signals]
        self._replaced: dict[signal.Signals, Any] = {}
        self.received: signal.Signals | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After Lightning installed its handlers (SLURM auto-requeue), which are then called after our save."""
        if threading.current_thread() is threading.main_thread():
            self._replaced = {s: signal.signal(s, self._note) for s in {signal.SIGTERM, *self.signals}}

    def _note(self, signum: int, frame: Any) -> None:
        self.received = self.received or signal.Signals(signum)  # only noted: a collective here could hang DDP ranks

    def _stop_if_signalled(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        """At a step boundary every rank stops if any was signalled (one all-reduce under DDP, none on one device)."""
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self.received = self.received or signal.SIGTERM  # another rank's signal
            raise SIGTERMException

    on_train_batch_end = on_validation_end = on_train_epoch_end = _stop_if_signalled  # the step boundaries

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.world_size == 1:  # DDP ranks may hold different numbers of validation images
            self._stop_if_signalled(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        received = exception.signal = self.received or signal.SIGTERM  # type: ignore[attr-defined]  # failure_message
        main = main_checkpoint(trainer)
        folder = str(self.dirpath or checkpoint_folder(trainer))
        target = os.path.join(folder, f"{self.filename}.ckpt")  # a string: an fsspec URL (s3://...) stays one
        if main is not None and str(main.dirpath) == folder:
            main.last_model_path = target  # its `last`: overwritten after the resume, not kept beside last-v1.ckpt
        trainer.save_checkpoint(target)
        if trainer.is_global_zero:
            log.warning("%s: saved checkpoint at global step %d to %s", received.name, trainer.global_step, target)
        # The SIGUSR1/SIGUSR2 handler we replaced, now at a step boundary: submitit's or Lightning's SLURM requeue
        # (not Lightning's SIGTERM handler: it would broadcast while the ranks exit).
        previous = self._replaced.get(self.received) if self.received in self.signals else None
        if callable(previous):
            previous(self.received, None)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Keep the checkpoint (OnExceptionCheckpoint removes its file here); put back the replaced handlers."""
        for signum, previous in self._replaced.items():
            signal.signal(signum, previous)
        self._replaced.clear()
