"""Training entry point: Hydra composes the run, Lightning runs it (CPU, one GPU, DDP, multi-node).

python -m drn_lightning.train model=drn_l scale=8 trainer.devices=4        # the paper's recipe on DF2K
python -m drn_lightning.train experiment=demo                              # the CPU demo (make train)
python -m drn_lightning.train -m experiment=demo data=semi data.unpaired_ratio=0,0.3,0.5"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any, cast

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from drn_lightning.config import ConfigError, build, check_monitors, validate_train_config
from drn_lightning.eval import final_evaluation
from drn_lightning.files import write_json
from drn_lightning.reliability import (
    RUN_FAILURES,
    AtomicCheckpointIO,
    configure_wandb,
    failure_message,
    finish_wandb,
    resume_from,
    run_lock,
    sweep_job_ranks,
)
from drn_lightning.runtime import keep_freed_memory


def _group(cfg: DictConfig, key: str) -> list[Any]:
    """Each entry of a dict-of-configs group (loggers, callbacks); `null` entries are dropped."""
    return [build(cfg, f"{key}.{name}") for name, node in (cfg.get(key) or {}).items() if node is not None]


def prepare(cfg: DictConfig) -> tuple[Any, pl.LightningModule, pl.Trainer]:
    """Everything that can fail on user input, before any step is taken: options, networks, trainer, then data."""
    validate_train_config(cfg)
    if cfg.get("torch_threads") is not None:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    pl.seed_everything(int(cfg.seed), workers=True)
    model = build(cfg, "model")
    parts = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
    model.save_hyperparameters({k: v for k, v in parts.items() if k != "_target_"}, logger=False)  # for reloading
    if cfg.get("weights"):
        try:
            model.load_pretrained(cfg.weights, cfg.get("dual_weights"), bool(cfg.get("allow_random_duals")))
        except ValueError as err:
            raise ConfigError(f"weights: {err}") from None
    configure_wandb(cfg)
    callbacks = _group(cfg, "callbacks")
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    loggers = _group(cfg, "logger") or False
    trainer = build(cfg, "trainer", logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO()])
    with open_dict(cfg):
        cfg.ckpt_path = resume_from(cfg.get("ckpt_path"), trainer)
    datamodule = build(cfg, "data")
    check_monitors(cfg, model, datamodule)
    return datamodule, model, trainer


def train(cfg: DictConfig, datamodule: Any, model: pl.LightningModule, trainer: pl.Trainer) -> dict[str, Any]:
    """Fit, then score on rank 0; returns the metrics a sweeper optimises."""
    run_dir = Path(str(cfg.paths.output_dir))
    hparams = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    hparams.pop("hydra", None)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)
    started = time.perf_counter()
    with sweep_job_ranks(trainer), warnings.catch_warnings():
        # resume_from found nothing to resume; Lightning looks again (for its OnExceptionCheckpoint) and says so twice
        warnings.filterwarnings("ignore", message=r'`?\.fit\(ckpt_path=(None\)|"last"\) is set, but there is no)')
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    elapsed = time.perf_counter() - started
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if not trainer.is_global_zero:
        return metrics
    if cfg.get("test_after_fit"):
        primal = cast(torch.nn.Module, model.primal)
        metrics["eval"] = final_evaluation(cfg, primal, datamodule.val_datasets, run_dir / "eval.json")
    metrics.update(train_seconds=elapsed, global_step=trainer.global_step)
    write_json({k: v for k, v in metrics.items() if k != "eval"}, run_dir / "metrics.json")
    finish_wandb(trainer, metrics.get("eval", {}))
    print(f"trained {trainer.global_step} steps in {elapsed / 60:.1f} min")
    print(f"run directory: {run_dir.resolve()}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: a bad option prints one line naming it (exit 2); an expected failure one line (exit 1)."""
    try:
        with run_lock(cfg.paths.output_dir):
            metrics = train(cfg, *prepare(cfg))
    except (ConfigError, *RUN_FAILURES) as err:  # a bad option, NaN loss, bad checkpoint or image, full disk, SIGTERM
        message, status = failure_message(err, cfg.paths.output_dir)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)
    return metrics.get("val/psnr")  # what a sweeper optimises


if __name__ == "__main__":
    main()
