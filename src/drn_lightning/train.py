"""Training entry point: Hydra composes the run, Lightning runs it (CPU, one GPU, DDP, multi-node).

    python -m drn_lightning.train                                  # CPU demo on the embedded photos
    python -m drn_lightning.train model=drn_l scale=8 trainer.devices=4
    python -m drn_lightning.train -m data=semi data.unpaired_ratio=0,0.1,0.3,0.5,0.7
    python -m drn_lightning.train experiment=paper_drn_s_x4 data.train.hr_dir=... trainer=gpu
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from drn_lightning.config import ConfigError, validate_train_config
from drn_lightning.runtime import apply_process_settings

log = __import__("logging").getLogger(__name__)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each entry of a dict-of-configs group (loggers, callbacks); `null` entries are dropped."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def _multirun_group() -> str | None:
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None
    return str(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def build_module(cfg: DictConfig, val_set_names: list[str], semi_supervised: bool) -> pl.LightningModule:
    """Networks, loss and optimiser factories from the config, wrapped in the LightningModule."""
    from drn_lightning.lit_module import DRNLitModule
    from drn_lightning.models import load_weights

    primal, duals = instantiate(cfg.model.net)
    if cfg.get("weights"):
        pretrained, pretrained_duals, info = load_weights(
            cfg.weights, cfg.get("dual_weights"), scale=int(cfg.scale)
        )
        primal.load_state_dict(pretrained.state_dict())
        if duals is not None and pretrained_duals is not None:
            duals.load_state_dict(pretrained_duals.state_dict())
        log.info("initialised from %s (%s x%d)", cfg.weights, info["variant"], info["scale"])
    loss = instantiate(cfg.model.loss, dual_weight=cfg.model.loss.dual_weight if cfg.model.dual else 0.0)
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams.pop("hydra", None)  # type: ignore[union-attr]
    return DRNLitModule(
        primal=primal,
        duals=duals,
        loss=loss,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
        scale=int(cfg.scale),
        val_set_names=val_set_names,
        round_y=bool(cfg.round_y),
        channels_last=bool(cfg.channels_last),
        semi_supervised=semi_supervised,
        nonfinite_loss=str(cfg.nonfinite_loss),
        nonfinite_check=str(cfg.get("nonfinite_check", "auto")),
        compile=bool(cfg.compile),
        hparams=hparams,  # type: ignore[arg-type]
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """Trainer with loggers, callbacks and the atomic checkpoint writer."""
    from drn_lightning.reliability import AtomicCheckpointIO

    loggers_cfg = cfg.get("logger")
    group = _multirun_group()
    if loggers_cfg and loggers_cfg.get("wandb") is not None and group and loggers_cfg.wandb.get("group") is None:
        with open_dict(loggers_cfg):
            loggers_cfg.wandb.group = group
    loggers = _instantiate_group(loggers_cfg)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()])


def final_evaluation(cfg: DictConfig, module: pl.LightningModule, datamodule: Any, run_dir: Path) -> dict[str, Any]:
    """Score the trained primal next to bicubic on the held-out sets (and Set5 when present); write eval.json."""
    from drn_lightning.eval import bicubic_upscaler, evaluate, model_upscaler, write_json

    datasets = dict(zip(datamodule.val_set_names, datamodule.val_datasets))
    root = Path(str(cfg.eval_sets_root))
    for name in cfg.get("eval_extra_sets") or []:
        if name not in datasets and (root / name).is_dir():
            from drn_lightning.data.datasets import BenchmarkDataset

            datasets[name] = BenchmarkDataset(root, name, int(cfg.scale))
    primal = module.primal.eval().cpu()
    primal = getattr(primal, "_orig_mod", primal)  # the eager module when torch.compile wrapped it
    scale = int(cfg.scale)
    model_scores = evaluate(model_upscaler(primal), datasets, scale, "cpu", bool(cfg.round_y))
    bicubic_scores = evaluate(bicubic_upscaler(scale), datasets, scale, "cpu", bool(cfg.round_y))
    report = {
        name: {
            "model": {k: model_scores[name][k] for k in ("psnr", "ssim")},
            "bicubic": {k: bicubic_scores[name][k] for k in ("psnr", "ssim")},
            "images": model_scores[name]["images"],
        }
        for name in datasets
    }
    write_json(report, run_dir / "eval.json")
    _print_comparison(report, scale, str(cfg.model.name))
    return report


def _print_comparison(report: dict[str, Any], scale: int, model_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model_name} x{scale} vs bicubic (PSNR/SSIM on Y, {scale}px shaved)")
    for column in ("set", "images", "bicubic PSNR", "model PSNR", "gain (dB)", "bicubic SSIM", "model SSIM"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, row in report.items():
        gain = row["model"]["psnr"] - row["bicubic"]["psnr"]
        table.add_row(
            name, str(row["images"]), f"{row['bicubic']['psnr']:.2f}", f"{row['model']['psnr']:.2f}",
            f"{gain:+.2f}", f"{row['bicubic']['ssim']:.4f}", f"{row['model']['ssim']:.4f}",
        )
    Console().print(table)


def _finish_wandb(trainer: pl.Trainer, report: dict[str, Any]) -> None:
    """Put the final scores in the W&B summary and close the run, so the next job of a multirun gets its own."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            summary = {
                f"eval/{name}/{who}_{metric}": value
                for name, row in report.items()
                for who in ("model", "bicubic")
                for metric, value in row[who].items()
            }
            logger.experiment.summary.update(summary)
            logger.experiment.finish()


def prepare(cfg: DictConfig) -> tuple[Any, pl.LightningModule, pl.Trainer]:
    """Everything that can fail on user input, before any data is read or any step is taken."""
    validate_train_config(cfg)
    apply_process_settings(cfg.get("torch_threads"), bool(cfg.get("keep_freed_memory", False)))
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule.val_set_names, semi_supervised=datamodule.unpaired_ratio > 0)
    return datamodule, module, build_trainer(cfg)


def train(cfg: DictConfig, datamodule: Any, module: pl.LightningModule, trainer: pl.Trainer) -> dict[str, Any]:
    """Fit, then score; returns the metrics a sweeper optimises."""
    run_dir = Path(str(cfg.paths.output_dir))
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    elapsed = time.perf_counter() - started
    metrics: dict[str, Any] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
    }
    if trainer.is_global_zero:
        if cfg.get("test_after_fit"):
            metrics["eval"] = final_evaluation(cfg, module, datamodule, run_dir)
        metrics["train_seconds"] = elapsed
        metrics["global_step"] = trainer.global_step
        from drn_lightning.eval import write_json

        write_json({k: v for k, v in metrics.items() if k != "eval"}, run_dir / "metrics.json")
        _finish_wandb(trainer, metrics.get("eval", {}))
        print(f"trained {trainer.global_step} steps in {elapsed / 60:.1f} min")
        print(f"run directory: {run_dir.resolve()}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; configuration errors print one line naming the option and exit non-zero."""
    try:
        datamodule, module, trainer = prepare(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    from drn_lightning.reliability import RUN_FAILURES, failure_message

    try:
        metrics = train(cfg, datamodule, module, trainer)
    except RUN_FAILURES as err:  # NaN loss, bad checkpoint/image, disk full, SIGTERM: the message says it all
        message, status = failure_message(err, cfg.paths.output_dir)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)
    value = metrics.get("val/psnr")
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
