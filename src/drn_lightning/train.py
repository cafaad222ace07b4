"""Training entry point: Hydra composes the run, Lightning runs it (CPU, one GPU, DDP, multi-node).

drn-train model=drn_l scale=8 trainer.devices=4        # the paper's recipe on DF2K (= python -m drn_lightning.train)
drn-train experiment=demo                              # the CPU demo (make train)
drn-train -m experiment=demo data=semi data.unpaired_ratio=0,0.3,0.5"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from drn_lightning.files import write_json
from drn_lightning.options import OptionError, boolean, integer
from drn_lightning.training.config import build, check_missing, check_monitors, check_output_dirs, entry_point

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from torch import nn

# torch and Lightning (~8 s to import) are imported when a run starts: `--cfg`, `--help` and tab completion stay fast.

log = logging.getLogger(__name__)


def _group(cfg: DictConfig, key: str) -> list[Any]:
    """Each entry of a dict-of-configs group (loggers, callbacks); `null` entries are dropped."""
    return [build(cfg, f"{key}.{name}") for name, node in (cfg.get(key) or {}).items() if node is not None]


def prepare(cfg: DictConfig) -> tuple[Any, pl.LightningModule, pl.Trainer]:
    """Everything that can fail on user input, before any step is taken: options, networks, trainer, then data."""
    import pytorch_lightning as pl
    import torch

    from drn_lightning.training.checkpoint_io import AtomicCheckpointIO
    from drn_lightning.training.run import configure_wandb, resume_from
    from drn_lightning.training.runtime import keep_freed_memory

    check_missing(cfg)
    check_output_dirs(cfg)
    if cfg.get("torch_threads") is not None:
        torch.set_num_threads(integer(cfg.torch_threads, "torch_threads", 1))
    if boolean(cfg.get("keep_freed_memory", False), "keep_freed_memory"):
        keep_freed_memory()
    pl.seed_everything(int(cfg.seed), workers=True)
    unverified = boolean(cfg.get("allow_unverified", False), "allow_unverified")  # our files without their digest
    if "_target_" not in cfg.model:
        raise OptionError("model", cfg.model.get("name"), "has no network to train; use drn_s, drn_l or drn_tiny")
    model = build(cfg, "model")
    if cfg.get("weights"):
        model.load_pretrained(
            cfg.weights, cfg.get("dual_weights"), bool(cfg.get("allow_random_duals")), allow_unverified=unverified
        )
    configure_wandb(cfg)
    callbacks = _group(cfg, "callbacks")
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
    trainer = build(
        cfg,
        "trainer",
        logger=_group(cfg, "logger") or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(allow_unverified=unverified)],
    )
    with open_dict(cfg):
        cfg.ckpt_path = resume_from(cfg.get("ckpt_path"), trainer)
    datamodule = build(cfg, "data")
    check_monitors(cfg, model.logged_metrics(datamodule.val_set_names))
    return datamodule, model, trainer


def train(cfg: DictConfig, datamodule: Any, model: pl.LightningModule, trainer: pl.Trainer) -> dict[str, Any]:
    """Fit, then score on rank 0; returns the metrics a sweeper optimises."""
    from drn_lightning.eval import final_evaluation
    from drn_lightning.training.run import finish_wandb, sweep_job_ranks

    run_dir = Path(str(cfg.paths.output_dir))
    hparams: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
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
        primal = cast("nn.Module", model.primal)
        metrics["eval"] = final_evaluation(cfg, primal, datamodule.val_datasets, run_dir / "eval.json")
    metrics.update(train_seconds=elapsed, global_step=trainer.global_step)
    write_json({k: v for k, v in metrics.items() if k != "eval"}, run_dir / "metrics.json")
    finish_wandb(trainer, metrics.get("eval", {}))
    log.info("trained %d steps in %.1f min; run directory: %s", trainer.global_step, elapsed / 60, run_dir.resolve())
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float | None:
    """Hydra task: a bad option is one line naming it (exit 2); an expected failure one line (exit 1)."""
    from drn_lightning.training.run import run_guard

    with run_guard(cfg):
        metrics = train(cfg, *prepare(cfg))
        value = metrics.get(str(cfg.get("optimized_metric") or "val/psnr"))
        if value is None and cfg.get("optimized_metric") and any(k.startswith("val/") for k in metrics):
            log.warning("optimized_metric=%s was not logged; logged: %s", cfg.optimized_metric, sorted(metrics))
        return value  # what a sweeper optimises
    return None


def main() -> None:
    """`drn-train` and `python -m drn_lightning.train`: a mistyped key is one line with the closest valid keys."""
    entry_point(run, "train")


if __name__ == "__main__":
    main()
