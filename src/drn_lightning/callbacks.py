"""Lightning callbacks: validation image grids for whichever logger is active, and the preemption checkpoint."""

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
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor

from drn_lightning.ops.imresize import imresize

log = logging.getLogger(__name__)


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
    top_row = torch.cat(panels, dim=-1)
    bottom_row = torch.cat(crops, dim=-1)
    if bottom_row.shape[-1] != top_row.shape[-1]:
        bottom_row = F.pad(bottom_row, (0, top_row.shape[-1] - bottom_row.shape[-1]))
    grid = torch.cat([top_row, bottom_row], dim=-2)[0]
    return grid.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class ImageGridLogger(pl.Callback):
    """Logs LR | bicubic | SR | HR grids of the first validation images, so progress can be seen, not just read."""

    def __init__(self, every_n_epochs: int = 1, max_images: int = 2, crop_size: int = 24) -> None:
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.crop_size = crop_size
        self._grids: list[tuple[str, np.ndarray]] = []

    def _active(self, trainer: pl.Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and self.every_n_epochs > 0
            and trainer.current_epoch % self.every_n_epochs == 0
        )

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active(trainer) or dataloader_idx != 0 or len(self._grids) >= self.max_images:
            return
        with torch.no_grad():
            lr = batch["lr"][0]
            sr = pl_module(lr)[-1]
        scale = int(pl_module.scale)  # type: ignore[arg-type]
        name = batch.get("name", [f"image{batch_idx}"])
        name = name[0] if isinstance(name, (list, tuple)) else str(name)
        self._grids.append(
            (
                Path(str(name)).stem,
                make_comparison_grid(lr, sr, batch["hr"], scale, self.crop_size),
            )
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._grids:
            return
        grids, self._grids = self._grids, []
        step = trainer.global_step
        for logger in trainer.loggers:
            kind = type(logger).__name__
            if kind == "WandbLogger":
                logger.log_image(  # type: ignore[attr-defined]
                    key="val/images", images=[g for _, g in grids], caption=[n for n, _ in grids], step=step
                )
            elif kind == "TensorBoardLogger":
                for name, grid in grids:
                    logger.experiment.add_image(f"val/{name}", grid, step, dataformats="HWC")  # type: ignore[attr-defined]
            else:
                folder = Path(logger.log_dir or trainer.default_root_dir) / "images"
                folder.mkdir(parents=True, exist_ok=True)
                for name, grid in grids:
                    Image.fromarray(grid).save(folder / f"{name}_step{step:07d}.png")


class PreemptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's OnExceptionCheckpoint narrowed to preemption: on SIGTERM, or `signals` such as SIGUSR2 (what
    submitit sends before a SLURM time limit), Lightning stops at the next batch boundary and this writes `last.ckpt`
    into the ModelCheckpoint's folder, so the same command (`ckpt_path=auto`) resumes at that step.

    Another signal is handled as SIGTERM by Lightning's own handler; a handler it replaced (submitit's requeue) is
    called once the checkpoint is written. Other exceptions (a NaN loss) save nothing, so a bad state never
    replaces the last good checkpoint; and the file stays at teardown (the parent class deletes its own).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "last",
        signals: Sequence[str] = ("SIGUSR2",),
    ) -> None:
        super().__init__(str(dirpath or ""), filename)
        self.signals = [signal.Signals[name] for name in signals]
        self._replaced: dict[signal.Signals, Any] = {}
        self.received: signal.Signals | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._replaced[signum] = signal.signal(signum, self._as_sigterm)

    def _as_sigterm(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum)
        signal.raise_signal(signal.SIGTERM)  # Lightning's graceful stop, on every rank

    def _pass_on(self) -> None:
        previous = self._replaced.get(self.received) if self.received is not None else None
        if callable(previous):
            previous(self.received, None)  # e.g. submitit requeues the job with the same overrides

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        model_checkpoint = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)
        folder = self.dirpath or (model_checkpoint and model_checkpoint.dirpath)
        target = Path(folder or os.path.join(trainer.default_root_dir, "checkpoints")) / f"{self.filename}.ckpt"
        if (
            model_checkpoint is not None
            and model_checkpoint.dirpath
            and Path(model_checkpoint.dirpath) == target.parent
        ):
            # Tell ModelCheckpoint this file is its `last`: after the resume it then overwrites it, instead of
            # keeping it and writing `last-v1.ckpt` next to it.
            model_checkpoint.last_model_path = str(target)
        trainer.save_checkpoint(target)
        if trainer.is_global_zero:
            name = self.received.name if self.received is not None else "SIGTERM"
            log.warning("%s: saved checkpoint at global step %d to %s", name, trainer.global_step, target)
        self._pass_on()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Keep the checkpoint (OnExceptionCheckpoint removes its file here); put back the replaced handlers."""
        for signum, previous in self._replaced.items():
            signal.signal(signum, previous)
        self._replaced.clear()
