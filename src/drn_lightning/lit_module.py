"""Thin Lightning glue: the primal P, the duals D_i and the DRN loss, optimised jointly, scored on PSNR/SSIM-Y."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from drn_lightning.losses import DRNLoss
from drn_lightning.metrics import PSNRY, SSIMY
from drn_lightning.ops.imresize import imresize

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN/Inf; the message names the step and the batch's files."""


class DRNLitModule(pl.LightningModule):
    """Closed-loop DRN training: paired samples get primal + dual losses, unpaired ones the dual loss only."""

    def __init__(
        self,
        primal: nn.Module,
        duals: nn.ModuleList | None,
        loss: DRNLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scale: int = 4,
        val_set_names: Sequence[str] = ("val",),
        round_y: bool = True,
        channels_last: bool = True,
        semi_supervised: bool = False,
        nonfinite_loss: str = "raise",
        compile: bool = False,
        hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss={nonfinite_loss!r}; allowed: 'raise', 'skip'")
        self.primal = primal
        self.duals = duals
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scale = scale
        self.val_set_names = list(val_set_names)
        self.round_y = round_y
        self.use_channels_last = channels_last
        self.semi_supervised = semi_supervised
        self.nonfinite_loss = nonfinite_loss
        self.compile_model = compile
        self.val_psnr = nn.ModuleList(PSNRY(scale, round_y=round_y) for _ in self.val_set_names)
        self.val_ssim = nn.ModuleList(SSIMY(scale, round_y=round_y) for _ in self.val_set_names)
        self.val_psnr_bicubic = nn.ModuleList(PSNRY(scale, round_y=round_y) for _ in self.val_set_names)
        self.bicubic_logged = False
        # Only plain values go to the checkpoint/loggers; networks are rebuilt from the Hydra config.
        self.save_hyperparameters(hparams or {"scale": scale, "val_set_names": list(val_set_names)})

    def setup(self, stage: str) -> None:
        if self.use_channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_model and stage == "fit":
            self.primal = torch.compile(self.primal)

    def forward(self, lr: Tensor) -> list[Tensor]:
        return self.primal(lr)

    def _prepare(self, image: Tensor) -> Tensor:
        return image.contiguous(memory_format=torch.channels_last) if self.use_channels_last else image

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        lr = [self._prepare(level) for level in batch["lr"]]
        hr = self._prepare(batch["hr"])
        outputs = self.primal(lr[0])
        paired = batch["paired"] if self.semi_supervised else None
        terms = self.loss_fn(outputs, lr, hr, self.duals, paired)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            names = list(batch.get("name", []))
            message = f"non-finite loss ({loss.item()}) at global step {self.global_step}, batch files: {names}"
            if self.nonfinite_loss == "raise":
                raise NonFiniteLossError(message)
            self.print(f"skipping batch: {message}")
            return None
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/primal", terms["primal"])
        self.log("train/dual", terms["dual"])
        return loss

    def _val_name(self, dataloader_idx: int) -> str:
        return self.val_set_names[dataloader_idx] if dataloader_idx < len(self.val_set_names) else str(dataloader_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        lr, hr = batch["lr"][0], batch["hr"]
        sr = self.primal(self._prepare(lr))[-1]
        self.val_psnr[dataloader_idx].update(sr, hr)
        self.val_ssim[dataloader_idx].update(sr, hr)
        if not self.bicubic_logged:
            self.val_psnr_bicubic[dataloader_idx].update(imresize(lr, scale=self.scale), hr)

    def on_validation_epoch_end(self) -> None:
        psnrs = []
        for idx, name in enumerate(self.val_set_names):
            if self.val_psnr[idx].update_count == 0:
                continue
            psnr = self.val_psnr[idx].compute()
            psnrs.append(psnr)
            self.log(f"val/{name}/psnr", psnr, sync_dist=False)
            self.log(f"val/{name}/ssim", self.val_ssim[idx].compute(), sync_dist=False)
            self.val_psnr[idx].reset()
            self.val_ssim[idx].reset()
            if not self.bicubic_logged and self.val_psnr_bicubic[idx].update_count > 0:
                self.log(f"val/{name}/psnr_bicubic", self.val_psnr_bicubic[idx].compute(), sync_dist=False)
                self.val_psnr_bicubic[idx].reset()
        if psnrs:
            self.log("val/psnr", torch.stack(psnrs).mean(), prog_bar=True, sync_dist=False)
            if not self.trainer.sanity_checking:
                self.bicubic_logged = True

    def configure_optimizers(self) -> Any:
        # One Adam over P and all D_i is numerically the authors' one-Adam-per-network (Adam is per-parameter).
        params = list(self.primal.parameters()) + (list(self.duals.parameters()) if self.duals is not None else [])
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            raise ValueError("cosine annealing needs a bounded run: set trainer.max_steps or trainer.max_epochs")
        scheduler = self.scheduler_factory(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
