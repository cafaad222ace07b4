"""What a training run needs from its folder and its launcher: the checkpoint to resume, the W&B run id, and
DDP ranks of its own inside a Hydra sweep. Used by `drn_lightning.train`."""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import cast

import pytorch_lightning as pl
import torch
from fsspec.core import url_to_fs
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from drn_lightning.config import ConfigError

__all__ = ["configure_wandb", "resume_from", "sweep_job_ranks", "wandb_run_id"]


def configure_wandb(cfg: DictConfig) -> None:
    """`logger.wandb`, when on: the run folder's W&B id (a resumed or requeued run continues its W&B run) and, in a
    sweep, the sweep folder as the group its jobs share."""
    if not (cfg.get("logger") and cfg.logger.get("wandb")):
        return
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    with open_dict(cfg):
        if cfg.logger.wandb.get("id") is None:
            cfg.logger.wandb.id = wandb_run_id(Path(str(cfg.paths.output_dir)))
        if cfg.logger.wandb.get("group") is None and hydra_cfg and hydra_cfg.mode == RunMode.MULTIRUN:
            cfg.logger.wandb.group = str(hydra_cfg.sweep.dir)


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id kept in `<run_dir>/wandb_id` (written by rank 0 on first start), so every start in that
    folder logs to one W&B run (offline: one `offline-run-*-<id>` folder per start, synced into one run)."""
    import secrets

    from drn_lightning.files import atomic_write

    path = run_dir / "wandb_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # other ranks log nothing, start after rank 0 wrote it
        atomic_write(path, lambda handle: handle.write(run_id.encode()))
    return run_id


def resume_from(ckpt_path: str | None, trainer: pl.Trainer) -> str | None:
    """`auto`: the run folder's newest last*.ckpt if any (a requeued job resumes), else a fresh start; `last`: that
    file or an error naming the folder; `null`: a fresh start, refused where a last*.ckpt would be overwritten (and
    Lightning, seeing an OnExceptionCheckpoint, would resume it anyway); a file as given. The folder may be an
    fsspec URL (s3://...)."""
    if ckpt_path not in ("auto", "last", None):
        return ckpt_path
    callback = trainer.checkpoint_callback
    folder = str(getattr(callback, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints"))
    fs, where = url_to_fs(folder)
    files = fs.ls(where, detail=False) if fs.isdir(where) else []
    found = max((f for f in files if fnmatch(posixpath.basename(f), "last*.ckpt")), key=fs.modified, default=None)
    if found is None and ckpt_path == "last":
        raise ConfigError(f"ckpt_path=last: no last*.ckpt in {folder} to resume from (ckpt_path=auto starts fresh)")
    if found is not None and ckpt_path is None:
        raise ConfigError(
            f"ckpt_path=null: {folder} holds {posixpath.basename(found)} of an earlier run, which a fresh start would "
            "overwrite; resume it with ckpt_path=auto, or start in another hydra.run.dir"
        )
    return None if found is None else os.path.join(folder, posixpath.basename(found))  # spelt as the folder is


@contextmanager
def sweep_job_ranks(trainer: pl.Trainer) -> Iterator[None]:
    """In a multirun job, Lightning's DDP launcher starts the other ranks with this process's argv (`-m`: each would
    re-run the whole sweep); give them this job's own overrides and folder, and once the job is done clear the
    rendezvous the launcher left, so that the next job starts ranks of its own."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        yield
        return
    argv, set_by_lightning = sys.argv, ("hydra.mode", "hydra.run.dir", "hydra.output_subdir", "hydra.job.name")
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if o.split("=")[0] not in set_by_lightning]
    sys.argv = [argv[0], *hydra_overrides, *hydra_cfg.overrides.task]
    with read_write(cast(DictConfig, hydra_cfg)):  # Lightning gives the ranks hydra.run.dir=<this>, output_subdir=null
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
    ranks = getattr(trainer.strategy.launcher, "procs", None)  # ranks Lightning started, not SLURM's or torchrun's
    if ranks:
        for rank in ranks:
            rank.wait()
        torch.distributed.destroy_process_group()
        for name in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
            os.environ.pop(name, None)
