"""What keeps a run recoverable (docs/reliability.md): verified atomic checkpoints, resume, one training per folder."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import secrets
import shutil
import signal
import sys
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, cast

import pytorch_lightning as pl
import torch
from filelock import FileLock, Timeout
from fsspec.core import url_to_fs
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from drn_lightning.callbacks import checkpoint_folder
from drn_lightning.config import ConfigError
from drn_lightning.data.io import ImageReadError
from drn_lightning.files import atomic_write, is_remote
from drn_lightning.lit_module import NonFiniteLossError
from drn_lightning.models.official import CheckpointError, safe_load, with_digest

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # a run stopped by SIGTERM after saving its checkpoint (the shell's code)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only, ...); the previous file at that path is kept."""


def to_plain(obj: Any) -> Any:
    """OmegaConf containers and dict subclasses made plain (loadable with `weights_only=True`); the rest kept as is."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        items = {key: to_plain(value) for key, value in obj.items()}
        unchanged = all(items[key] is value for key, value in obj.items())
        if unchanged and type(obj) in (dict, OrderedDict, defaultdict):
            return obj
        return OrderedDict(items) if type(obj) is OrderedDict else items
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):  # a NamedTuple is kept
        converted = [to_plain(value) for value in obj]
        if type(obj) in (list, tuple) and all(a is b for a, b in zip(converted, obj)):
            return obj
        return converted if isinstance(obj, list) else tuple(converted)
    return obj


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all, with a SHA-256 of their tensors, and read with `weights_only=True`."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        plain = with_digest(to_plain(checkpoint))  # checked when read back (safe_load)
        if is_remote(path):
            try:
                super().save_checkpoint(plain, os.fspath(path))
            except OSError as err:
                raise CheckpointWriteError(f"{path}: cannot write checkpoint ({err.strerror or err})") from err
            return
        path = Path(path)
        try:
            atomic_write(path, lambda handle: torch.save(plain, handle))
        except (OSError, RuntimeError) as err:
            # torch's zip writer, closing after a failed write, raises "unexpected pos" with the OSError as context
            cause = next((e for e in (err, err.__context__, err.__cause__) if isinstance(e, OSError)), None)
            if cause is None:
                raise
            message = f"{path}: cannot write checkpoint ({cause.strerror or cause})"
            if cause.errno in (errno.ENOSPC, errno.EDQUOT):
                with contextlib.suppress(OSError):
                    message += f"; {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free on that filesystem"
            kept = "the previous file at that path is kept" if path.exists() else "no file was written"
            failure = CheckpointWriteError(f"{message}; {kept}, no partial file is left")
            failure.errno = cause.errno
            raise failure from cause
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer of this file killed mid-write
            with contextlib.suppress(OSError):
                stale.unlink()

    def load_checkpoint(
        self, path: str | os.PathLike[str], map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load on CPU with `weights_only=True` whatever `weights_only` says; Lightning moves tensors later."""
        if weights_only is False:
            log.warning("%s: weights_only=False ignored; checkpoints are always read with weights_only=True", path)
        checkpoint = safe_load(path)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(
                f"{path}: not a Lightning checkpoint (found {type(checkpoint).__name__}, expected a dict)"
            )
        return checkpoint


# Errors a run stops on by design; their messages name the step, file or option, so a traceback adds nothing.
RUN_FAILURES = (NonFiniteLossError, CheckpointError, CheckpointWriteError, ImageReadError, SIGTERMException)


def failure_message(err: BaseException, run_dir: str | os.PathLike[str] | None = None) -> tuple[str, int]:
    """(one-line message, exit status) for a ConfigError (2: nothing was started) or an error in `RUN_FAILURES`."""
    if isinstance(err, ConfigError):
        return str(err), 2
    if isinstance(err, SIGTERMException):
        where = f" hydra.run.dir={run_dir}" if run_dir is not None else ""
        return (f"stopped by SIGTERM (preemption); resume with ckpt_path=last{where}", SIGTERM_EXIT_CODE)
    message = str(err)
    if message.startswith("Caught ") and "Original Traceback" in message:  # re-raised from a DataLoader worker
        last = message.strip().splitlines()[-1]
        message = last.split(": ", 1)[1] if last.startswith(f"{type(err).__module__}.{type(err).__name__}: ") else last
    return message, 1


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """One training per run folder: held by global rank 0 until its process ends, even killed (not by its DDP ranks)."""
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
        yield
        return
    path = Path(run_dir) / ".train.lock"
    try:
        held = FileLock(path).acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: another training is running in this folder (it holds {path}); "
            "wait for it to end or give another hydra.run.dir"
        ) from None
    with held:
        yield


def configure_wandb(cfg: DictConfig) -> None:
    """The run folder's W&B id (a resumed run continues its W&B run) and, in a sweep, the sweep folder as group."""
    if not (cfg.get("logger") and cfg.logger.get("wandb")):
        return
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    with open_dict(cfg):
        if cfg.logger.wandb.get("id") is None:  # kept in <run>/wandb_id: one W&B run per folder
            path = Path(str(cfg.paths.output_dir)) / "wandb_id"
            run_id = path.read_text().strip() if path.is_file() else secrets.token_hex(6)
            if not path.is_file() and rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # DDP ranks start later
                atomic_write(path, lambda handle: handle.write(run_id.encode()))
            cfg.logger.wandb.id = run_id
        if cfg.logger.wandb.get("group") is None and hydra_cfg and hydra_cfg.mode == RunMode.MULTIRUN:
            cfg.logger.wandb.group = str(hydra_cfg.sweep.dir)


def finish_wandb(trainer: pl.Trainer, report: dict[str, Any]) -> None:
    """The final scores into each W&B run's summary; the run closed, so that the next job of a sweep gets its own."""
    scores = {
        f"eval/{name}/{who}_{metric}": value
        for name, row in report.items()
        for who in ("model", "bicubic")
        for metric, value in row[who].items()
    }
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(scores)
            logger.experiment.finish()


def resume_from(ckpt_path: str | None, trainer: pl.Trainer) -> str | None:
    """`auto`: the newest last*.ckpt, else a fresh start; `last`: that or an error; `null`: a fresh start unless a
    last*.ckpt would be overwritten (Lightning would resume it anyway); a file as given. The folder may be a URL."""
    if ckpt_path not in ("auto", "last", None):
        return ckpt_path
    folder = checkpoint_folder(trainer)
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


@contextlib.contextmanager
def sweep_job_ranks(trainer: pl.Trainer) -> Iterator[None]:
    """In a multirun job, DDP ranks started with this job's overrides (not `-m`: the sweep again), and cleared after."""
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
