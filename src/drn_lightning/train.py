"""Training entry point: Hydra composes the run, Lightning runs it (CPU, one GPU, DDP, multi-node).

python -m drn_lightning.train model=drn_l scale=8 trainer.devices=4        # the paper's recipe on DF2K
python -m drn_lightning.train experiment=demo                              # the CPU demo (make train)
python -m drn_lightning.train -m experiment=demo data=semi data.unpaired_ratio=0,0.3,0.5
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any, cast

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from drn_lightning.config import ConfigError, build, check_monitors, validate_train_config
from drn_lightning.launch import configure_wandb, resume_from, sweep_job_ranks
from drn_lightning.reliability import RUN_FAILURES, AtomicCheckpointIO, failure_message, run_lock
from drn_lightning.runtime import apply_process_settings


def _group(cfg: DictConfig, key: str) -> list[Any]:
    """Each entry of a dict-of-configs group (loggers, callbacks); `null` entries are dropped."""
    return [build(cfg, f"{key}.{name}") for name, node in (cfg.get(key) or {}).items() if node is not None]


def prepare(cfg: DictConfig) -> tuple[Any, pl.LightningModule, pl.Trainer]:
    """Everything that can fail on user input, before any step is taken: options, networks, trainer, then data."""
    validate_train_config(cfg)
    try:
        apply_process_settings(cfg.get("torch_threads"), cfg.get("keep_freed_memory", False))
    except ValueError as err:
        raise ConfigError(str(err)) from None
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
    loggers = _group(cfg, "logger")
    trainer = build(cfg, "trainer", logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()])
    with open_dict(cfg):
        cfg.ckpt_path = resume_from(cfg.get("ckpt_path"), trainer)
    datamodule = build(cfg, "data")
    check_monitors(cfg, model, datamodule)
    return datamodule, model, trainer


def train(cfg: DictConfig, datamodule: Any, model: pl.LightningModule, trainer: pl.Trainer) -> dict[str, Any]:
    """Fit, then score on rank 0; returns the metrics a sweeper optimises."""
    from drn_lightning.data import BenchmarkDataset
    from drn_lightning.eval import final_evaluation
    from drn_lightning.files import write_json

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
        datasets = dict(datamodule.val_datasets)
        root = Path(str(cfg.eval_sets_root))
        for name in cfg.get("eval_extra_sets") or []:
            if name not in datasets and (root / name).is_dir():
                datasets[name] = BenchmarkDataset(root, name, int(cfg.scale))
        primal: Any = model.primal
        metrics["eval"] = final_evaluation(
            primal, datasets, int(cfg.scale), bool(cfg.round_y), str(cfg.model.name), run_dir / "eval.json"
        )
    metrics.update(train_seconds=elapsed, global_step=trainer.global_step)
    write_json({k: v for k, v in metrics.items() if k != "eval"}, run_dir / "metrics.json")
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":  # final scores in the summary; close so the next job gets a run
            logger.experiment.summary.update(  # type: ignore[attr-defined]
                {
                    f"eval/{name}/{who}_{metric}": value
                    for name, row in metrics.get("eval", {}).items()
                    for who in ("model", "bicubic")
                    for metric, value in row[who].items()
                }
            )
            logger.experiment.finish()  # type: ignore[attr-defined]
    print(f"trained {trainer.global_step} steps in {elapsed / 60:.1f} min")
    print(f"run directory: {run_dir.resolve()}")
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: a bad option prints one line naming it (exit 2); an expected failure one line (exit 1)."""
    try:
        with run_lock(cfg.paths.output_dir):
            metrics = train(cfg, *prepare(cfg))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except RUN_FAILURES as err:  # NaN loss, bad checkpoint/image, disk full, SIGTERM: the message says it all
        message, status = failure_message(err, cfg.paths.output_dir)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)
    value = metrics.get("val/psnr")
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
