"""Thin Lightning glue: the primal P, the duals D_i and the DRN loss, optimised jointly, scored on PSNR/SSIM-Y."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from drn_lightning.losses import DRNLoss
from drn_lightning.metrics import PSNRY, SSIMY
from drn_lightning.ops.imresize import imresize

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


NONFINITE_CHECKS = ("auto", "host", "device")


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN/Inf; the message names the step and the batch's files."""


class _PendingLoss(NamedTuple):
    """A loss on its way to the host (device-side check): read once its copy has landed, never by a sync."""

    step: int
    names: list[str]
    value: Tensor  # 0-d float32 on the host (pinned on CUDA)
    ready: Any  # a CUDA event recorded after the copy, or None on the CPU


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
        nonfinite_check: str = "auto",
        compile: bool = False,
        hparams: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss={nonfinite_loss!r}; allowed: 'raise', 'skip'")
        if nonfinite_check not in NONFINITE_CHECKS:
            raise ValueError(f"nonfinite_check={nonfinite_check!r}; allowed: {', '.join(NONFINITE_CHECKS)}")
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
        self.nonfinite_check = nonfinite_check
        self._unreported: list[_PendingLoss] = []  # device-side check: losses not yet read on the host
        self._bad_since_step: list[Tensor] = []  # device-side check: one flag per micro-batch since the last step
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
        if self._check_on_device():
            self._queue_loss_check(loss, list(batch.get("name", [])))
        elif not torch.isfinite(loss):  # a host sync: free on the CPU
            self._nonfinite(loss.item(), self.global_step, list(batch.get("name", [])))
            return None
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/primal", terms["primal"])
        self.log("train/dual", terms["dual"])
        return loss

    def _nonfinite(self, value: float, step: int, names: list[str]) -> None:
        message = f"non-finite loss ({value}) at global step {step}, batch files: {names}"
        if self.nonfinite_loss == "raise":
            raise NonFiniteLossError(message)
        self.print(f"skipping batch: {message}")

    def _check_on_device(self) -> bool:
        """Check losses without a host sync per step (CUDA by default) where the optimiser can skip a step on the
        device: a fused optimiser (it honours `found_inf`, as for GradScaler) and no GradScaler of its own."""
        if self.nonfinite_check == "host" or self._trainer is None:
            return False
        if self.nonfinite_check == "auto" and self.device.type != "cuda":
            return False
        optimizer = self.trainer.optimizers[0] if len(self.trainer.optimizers) == 1 else None
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        capable = bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and scaler is None
        if not capable and self.nonfinite_check == "device":
            raise ValueError("nonfinite_check=device needs one fused optimiser (model.optimizer.fused=true) and no "
                             "GradScaler (trainer.precision=16-mixed); use nonfinite_check=host or auto")
        return capable

    def _queue_loss_check(self, loss: Tensor, names: list[str]) -> None:
        """Flag the step on the device for the optimiser and start a non-blocking copy of the loss to the host."""
        value = loss.detach().float()
        self._bad_since_step.append((~torch.isfinite(value)).float())
        if value.device.type == "cuda":
            host = torch.empty((), dtype=torch.float32, pin_memory=True)
            host.copy_(value, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host, ready = value.cpu().clone(), None
        self._unreported.append(_PendingLoss(self.global_step, names, host, ready))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._bad_since_step:
            return
        # Fused Adam reads `found_inf` after the closure and then leaves weights, moments and step count as they
        # were: a non-finite batch (or micro-batch) is skipped on the device. DDP: every rank skips the same step.
        found_inf = torch.stack(self._bad_since_step).amax()
        self._bad_since_step.clear()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(found_inf, op=torch.distributed.ReduceOp.MAX)
        optimizer.found_inf = found_inf  # type: ignore[attr-defined]

    def _report_losses(self, wait: bool) -> None:
        """Raise or log for non-finite losses that reached the host; `wait` also reads those still in flight."""
        while self._unreported:
            pending = self._unreported[0]
            if pending.ready is not None:
                if not (wait or pending.ready.query()):
                    return
                pending.ready.synchronize()
            self._unreported.pop(0)
            value = float(pending.value)
            if not math.isfinite(value):
                self._nonfinite(value, pending.step, pending.names)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._report_losses(wait=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._report_losses(wait=True)  # saving syncs anyway; nothing is written after a non-finite loss

    def on_train_end(self) -> None:
        self._report_losses(wait=True)

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
