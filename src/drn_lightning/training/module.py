"""Thin Lightning glue: the primal P, its duals D_i and the DRN loss, optimised jointly, scored on PSNR/SSIM-Y."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from drn_lightning.metrics import PSNRY, SSIMY
from drn_lightning.models import describe, load_weights
from drn_lightning.models.weights import CheckpointError, infer_primal_config, network_mismatch
from drn_lightning.ops.imresize import imresize
from drn_lightning.options import ExpectedError, OptionError, integer, one_of
from drn_lightning.training.losses import DRNLoss

Part = Mapping[str, Any]  # a Hydra config of a part (`_target_: ...`): how the checkpoint's hparams store it


class NonFiniteLossError(ExpectedError, RuntimeError):
    """Raised when a training loss is NaN/Inf; the message names the step and the batch's files."""


def _built(part: Any) -> Any:
    """A part given as its Hydra config (as configs and checkpoints hold it) is built; objects pass through."""
    return instantiate(part) if isinstance(part, Mapping) and "_target_" in part else part


class DRNLitModule(pl.LightningModule):
    """Closed-loop DRN training; its parts are Hydra configs saved as hparams, so `load_from_checkpoint` rebuilds it."""

    def __init__(
        self,
        net: Part | nn.Module,
        loss: Part | DRNLoss,
        optimizer: Part | Callable[[Iterable[Any]], torch.optim.Optimizer],
        scheduler: Part | Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        name: str = "drn",
        scale: int = 4,
        dual: bool = True,
        round_y: bool = True,
        channels_last: bool = True,
        compile: bool = False,
        nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[k for k, v in locals().items() if callable(v)])  # configs, not objects
        self.name, self.scale = str(name), integer(scale, "scale", 1)
        self.nonfinite_loss = one_of(nonfinite_loss, "nonfinite_loss", ("raise", "skip"))
        self.optimizer_factory, self.scheduler_factory = _built(optimizer), _built(scheduler)
        lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if lr is not None and not lr > 0:
            raise OptionError("optimizer.lr", lr, "must be > 0")
        self.primal: nn.Module = _built(net)
        if dual and not hasattr(self.primal, "build_duals"):
            raise OptionError("dual", dual, f"net {type(self.primal).__name__} has no build_duals(); set dual=false")
        self.duals: nn.ModuleList | None = self.primal.build_duals() if dual else None
        self.loss_fn: DRNLoss = _built(loss)
        self.round_y, self.use_channels_last, self.compile_model = bool(round_y), bool(channels_last), bool(compile)
        self.val_set_names: list[str] = []
        self.val_metrics = nn.ModuleList()  # per validation set: [PSNR, SSIM, bicubic PSNR], made in setup
        self.bicubic_logged = False

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, **kwargs: Any) -> DRNLitModule:  # type: ignore[override]
        """Lightning's loader, then eval mode: a reloaded module is for inference (call `.train()` to fine-tune)."""
        return super().load_from_checkpoint(checkpoint_path, **kwargs).eval()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming another network (scale, variant, width, duals): a line naming both, not every mismatched tensor."""
        try:
            path = self.trainer.ckpt_path
        except RuntimeError:  # load_from_checkpoint: its own `strict` decides
            return
        problem = network_mismatch(checkpoint.get("state_dict", {}), self.state_dict())
        if problem:
            raise OptionError("ckpt_path", path, problem)

    def logged_metrics(self, val_set_names: Iterable[str]) -> set[str]:
        """Every metric name this module logs, so a callback's `monitor` can be checked before training."""
        per_set = {f"val/{name}/{m}" for name in val_set_names for m in ("psnr", "ssim", "psnr_bicubic")}
        return per_set | {"val/psnr", "train/loss", "train/primal", "train/dual", "epoch", "step"}

    def load_pretrained(
        self,
        weights: str,
        dual_weights: str | None = None,
        allow_random_duals: bool = False,
        allow_unverified: bool = False,
    ) -> None:
        """Start from trained P and D_i (the authors' `.pt` pair or our `.ckpt`), as the paper's adaptation does."""
        try:
            primal, duals, info = load_weights(weights, dual_weights, allow_unverified=allow_unverified)
        except FileNotFoundError:
            key = "weights" if dual_weights is None else "weights/dual_weights"  # either file may be missing
            raise OptionError(key, weights, "file not found") from None
        mine = info  # a net that is not a DRN: its own load_state_dict says what differs
        with contextlib.suppress(CheckpointError):
            mine = infer_primal_config(self.primal.state_dict())
        if mine != info:  # scale, n_feats, n_blocks (the variant follows from them)
            raise OptionError("weights", weights, f"checkpoint: {describe(info)}; config: {describe(mine)}")
        self.primal.load_state_dict(primal.state_dict())
        if self.duals is not None and duals is not None:
            self.duals.load_state_dict(duals.state_dict())
        elif self.duals is not None and not allow_random_duals:
            raise OptionError(
                "weights",
                weights,
                "holds no dual regressors: give dual_weights=FILE, or allow_random_duals=true to train D_i from random",
            )
        rank_zero_info(f"initialised from {weights} ({describe(info)})")

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self.val_set_names = list(getattr(datamodule, "val_set_names", None) or ["val"])
        patch = getattr(datamodule, "patch_size", None)
        if patch and not self.compile_model:  # the model summary's FLOPs for one LR patch (compiled: a 2nd compile)
            self.example_input_array = torch.zeros(1, 3, patch // self.scale, patch // self.scale)
        args = self.scale, self.round_y
        self.val_metrics = nn.ModuleList(
            nn.ModuleList([PSNRY(*args), SSIMY(*args), PSNRY(*args)]) for _ in self.val_set_names
        )
        if self.use_channels_last:
            self.to(memory_format=torch.channels_last)
        if self.compile_model and stage == "fit":
            self.primal.compile()  # in place: the state_dict keys stay `primal.*`

    def forward(self, lr: Tensor) -> list[Tensor]:
        """P(x): one image per x2 step, coarse to fine (LR size ... HR size)."""
        out = self.primal(lr)
        return list(out) if isinstance(out, list | tuple) else [out]

    def _prepare(self, image: Tensor) -> Tensor:
        return image.contiguous(memory_format=torch.channels_last) if self.use_channels_last else image

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """Eq. (3): L1(P(x), y) at every scale + lambda * L1(D(P(x)), x), the dual term alone for unpaired x."""
        lr_pyramid = [self._prepare(level) for level in batch["lr"]]  # coarse to fine, HR excluded
        sr_levels = self(lr_pyramid[0])  # one image per x2 step (a single-output net: the final SR alone)
        lr_targets = lr_pyramid[: len(sr_levels) - 1]
        terms = self.loss_fn(sr_levels, lr_targets, self._prepare(batch["hr"]), self.duals, batch.get("paired"))
        if not torch.isfinite(terms["loss"]):  # one host sync per step, the price of stopping at the bad batch
            message = f"non-finite loss ({terms['loss'].item()}) at global step {self.global_step}, batch files: {list(batch.get('name', []))}"
            if self.nonfinite_loss == "raise":
                raise NonFiniteLossError(message)
            self.print(f"skipping batch: {message}")
            return None
        self.log("train/loss", terms["loss"], prog_bar=True)
        self.log_dict({"train/primal": terms["primal"], "train/dual": terms["dual"]})
        return terms["loss"]

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
            psnrs.append(psnr.compute())  # torchmetrics syncs its sums over ranks: the logged value is already global
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
            raise OptionError(
                "trainer.max_steps",
                self.trainer.max_steps,
                "the cosine schedule needs a bounded run: set trainer.max_steps or trainer.max_epochs",
            )
        scheduler = self.scheduler_factory(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
