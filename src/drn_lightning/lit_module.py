"""Thin Lightning glue: the primal P, its duals D_i and the DRN loss, optimised jointly, scored on PSNR/SSIM-Y."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from drn_lightning.checks import integer, one_of
from drn_lightning.losses import DRNLoss
from drn_lightning.metrics import PSNRY, SSIMY
from drn_lightning.models import load_weights
from drn_lightning.ops.imresize import imresize

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

NONFINITE_LOSS = ("raise", "skip")
NONFINITE_CHECKS = ("auto", "host", "device")


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN/Inf; the message names the step and the batch's files."""


# A loss copied to the host, read once landed, never by a sync: (step, batch files, host copy, CUDA event or None)
_PendingLoss = tuple[int, list[str], Tensor, Any]


def _built(part: Any) -> Any:
    """A part given as its Hydra config (as a checkpoint stores it) is built; objects pass through."""
    return instantiate(part) if isinstance(part, Mapping) and "_target_" in part else part


class DRNLitModule(pl.LightningModule):
    """Closed-loop DRN training: primal + dual losses on paired samples, the dual loss alone on unpaired ones."""

    def __init__(
        self,
        net: nn.Module | Mapping[str, Any],
        loss: DRNLoss | Mapping[str, Any],
        optimizer: OptimizerFactory | Mapping[str, Any],
        scheduler: SchedulerFactory | Mapping[str, Any] | None = None,
        name: str = "drn",
        scale: int = 4,
        dual: bool = True,
        round_y: bool = True,
        channels_last: bool = True,
        compile: bool = False,
        nonfinite_loss: str = "raise",
        nonfinite_check: str = "auto",
    ) -> None:
        super().__init__()
        self.name, self.scale = str(name), integer(scale, "scale", 1)
        self.nonfinite_loss = one_of(nonfinite_loss, "nonfinite_loss", NONFINITE_LOSS)
        self.nonfinite_check = one_of(nonfinite_check, "nonfinite_check", NONFINITE_CHECKS)
        self.optimizer_factory, self.scheduler_factory = _built(optimizer), _built(scheduler)
        lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if lr is not None and not lr > 0:
            raise ValueError(f"optimizer.lr={lr} must be > 0")
        self.primal: nn.Module = _built(net)
        if dual and not hasattr(self.primal, "build_duals"):
            raise ValueError(f"dual={dual}: net {type(self.primal).__name__} has no build_duals(); set dual=false")
        self.duals: nn.ModuleList | None = self.primal.build_duals() if dual else None
        self.loss_fn: DRNLoss = _built(loss)
        self.round_y, self.use_channels_last, self.compile_model = bool(round_y), bool(channels_last), bool(compile)
        self.val_set_names: list[str] = []
        self.val_metrics = nn.ModuleList()  # per validation set: [PSNR, SSIM, bicubic PSNR], made in setup
        self.bicubic_logged = False
        self._unreported: list[_PendingLoss] = []  # device-side check: losses not yet read on the host
        self._bad_since_step: list[Tensor] = []  # device-side check: one flag per micro-batch since the last step

    def load_pretrained(self, weights: str, dual_weights: str | None = None, allow_random_duals: bool = False) -> None:
        """Start from trained P and D_i (the authors' `.pt` pair or our `.ckpt`), as the paper's adaptation does."""
        primal, duals, info = load_weights(weights, dual_weights, scale=self.scale)
        self.primal.load_state_dict(primal.state_dict())
        if self.duals is not None and duals is not None:
            self.duals.load_state_dict(duals.state_dict())
        elif self.duals is not None and not allow_random_duals:
            raise ValueError(
                f"{weights} holds no dual regressors: give dual_weights=FILE, or allow_random_duals=true "
                "to train D_i from random"
            )
        rank_zero_info(f"initialised from {weights} ({info['variant']} x{info['scale']})")

    def setup(self, stage: str) -> None:
        self.val_set_names = list(getattr(getattr(self.trainer, "datamodule", None), "val_set_names", None) or ["val"])
        args = self.scale, self.round_y
        self.val_metrics = nn.ModuleList(
            nn.ModuleList([PSNRY(*args), SSIMY(*args), PSNRY(*args)]) for _ in self.val_set_names
        )
        if self.use_channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_model and stage == "fit":
            self.primal.compile()  # in place: the state_dict keys stay `primal.*`

    def forward(self, lr: Tensor) -> list[Tensor]:
        out = self.primal(lr)
        return list(out) if isinstance(out, list | tuple) else [out]

    def _prepare(self, image: Tensor) -> Tensor:
        return image.contiguous(memory_format=torch.channels_last) if self.use_channels_last else image

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        lr = [self._prepare(level) for level in batch["lr"]]
        outputs = self(lr[0])
        terms = self.loss_fn(
            outputs, lr[: len(outputs) - 1], self._prepare(batch["hr"]), self.duals, batch.get("paired")
        )
        loss, names = terms["loss"], list(batch.get("name", []))
        if self._check_on_device():
            self._queue_loss_check(loss, names)
        elif not torch.isfinite(loss):  # a host sync: free on the CPU
            self._nonfinite(loss.item(), self.global_step, names)
            return None
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/primal": terms["primal"], "train/dual": terms["dual"]})
        return loss

    def _nonfinite(self, value: float, step: int, names: list[str]) -> None:
        message = f"non-finite loss ({value}) at global step {step}, batch files: {names}"
        if self.nonfinite_loss == "raise":
            raise NonFiniteLossError(message)
        self.print(f"skipping batch: {message}")

    def _check_on_device(self) -> bool:
        """No host sync per step (CUDA's default) where a fused optimiser without GradScaler skips a step itself."""
        if self.nonfinite_check == "host" or self._trainer is None:
            return False
        if self.nonfinite_check == "auto" and self.device.type != "cuda":
            return False
        optimizer = self.trainer.optimizers[0] if len(self.trainer.optimizers) == 1 else None
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        capable = bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and scaler is None
        if not capable and self.nonfinite_check == "device":
            raise ValueError(
                "nonfinite_check=device needs one fused optimiser (model.optimizer.fused=true) and no "
                "GradScaler (trainer.precision=16-mixed); use nonfinite_check=host or auto"
            )
        return capable

    def _queue_loss_check(self, loss: Tensor, names: list[str]) -> None:
        """Flag the step on the device for the optimiser and start a non-blocking copy of the loss to the host."""
        value = loss.detach().float()
        self._bad_since_step.append((~torch.isfinite(value)).float())
        ready = torch.cuda.Event() if value.is_cuda else None
        host = value.to("cpu", non_blocking=True)  # from CUDA: into pinned memory, without waiting
        if ready is not None:
            ready.record()
        self._unreported.append((self.global_step, names, host, ready))

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
            step, names, host, ready = self._unreported[0]
            if ready is not None:
                if not (wait or ready.query()):
                    return
                ready.synchronize()
            self._unreported.pop(0)
            value = float(host)
            if not math.isfinite(value):
                self._nonfinite(value, step, names)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._report_losses(wait=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._report_losses(wait=True)  # saving syncs anyway; nothing is written after a non-finite loss

    def on_train_end(self) -> None:
        self._report_losses(wait=True)

    def _metrics(self, dataloader_idx: int) -> tuple[PSNRY, SSIMY, PSNRY]:
        psnr, ssim, bicubic = self.val_metrics[dataloader_idx].children()
        return psnr, ssim, bicubic  # type: ignore[return-value]

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        lr, hr = batch["lr"][0], batch["hr"]
        sr = self(self._prepare(lr))[-1]
        psnr, ssim, bicubic = self._metrics(dataloader_idx)
        psnr.update(sr, hr)
        ssim.update(sr, hr)
        if not self.bicubic_logged:
            bicubic.update(imresize(lr, scale=self.scale), hr)

    def on_validation_epoch_end(self) -> None:
        psnrs = []
        for idx, name in enumerate(self.val_set_names):
            psnr, ssim, bicubic = self._metrics(idx)
            if psnr.update_count == 0:
                continue
            psnrs.append(psnr.compute())
            self.log(f"val/{name}/psnr", psnrs[-1], sync_dist=False)
            self.log(f"val/{name}/ssim", ssim.compute(), sync_dist=False)
            if not self.bicubic_logged and bicubic.update_count > 0:
                self.log(f"val/{name}/psnr_bicubic", bicubic.compute(), sync_dist=False)
            for metric in (psnr, ssim, bicubic):
                metric.reset()
        if psnrs:  # the first validation set selects checkpoints (the target degradation in the semi configs)
            self.log("val/psnr", psnrs[0], prog_bar=True, sync_dist=False)
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
