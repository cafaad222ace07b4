"""What keeps a run recoverable (docs/reliability.md): verified atomic checkpoints, resume, one training per folder."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import secrets
import signal
import sys
import warnings
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
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from rich.syntax import Syntax
from rich.tree import Tree

from drn_lightning.files import atomic_write
from drn_lightning.options import ExpectedError, OptionError
from drn_lightning.report import FILE_ONLY, print_rich
from drn_lightning.training.callbacks import checkpoint_folder
from drn_lightning.training.config import as_typed

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # a run stopped by SIGTERM after saving its checkpoint (the shell's code)


def failure_message(err: BaseException, run_dir: str | os.PathLike[str] | None = None) -> tuple[str, int]:
    """(one-line message, exit status) of an ExpectedError (OptionError: 2) or a preemption stop (its noted signal)."""
    if isinstance(err, SIGTERMException):
        where = f" hydra.run.dir={run_dir}" if run_dir is not None else ""
        name = signal.Signals(getattr(err, "signal", signal.SIGTERM)).name
        return (f"stopped by {name} (preemption); resume with ckpt_path=last{where}", SIGTERM_EXIT_CODE)
    message = str(err).strip()
    if "\nOriginal Traceback" in message:  # torch re-raises a DataLoader worker's error with its traceback as text
        message = message.splitlines()[-1].partition(": ")[2]
    return message, getattr(err, "exit_code", 1)


def run_lock(run_dir: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Any]:
    """One training per run folder: held by global rank 0 until its process ends, even killed (not by its DDP ranks)."""
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
        return contextlib.nullcontext()
    path = Path(run_dir) / ".train.lock"
    try:
        return FileLock(path).acquire(timeout=0)
    except Timeout:
        raise OptionError(
            "hydra.run.dir",
            str(run_dir),
            f"another training is running in this folder (it holds {path}); "
            "wait for it to end or give another hydra.run.dir",
        ) from None


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
        fs, where = url_to_fs(str(ckpt_path))
        if not fs.isfile(where):
            raise OptionError("ckpt_path", ckpt_path, "file not found")
        return ckpt_path
    folder = checkpoint_folder(trainer)
    fs, where = url_to_fs(folder)
    files = fs.ls(where, detail=False) if fs.isdir(where) else []
    found = max((f for f in files if fnmatch(posixpath.basename(f), "last*.ckpt")), key=fs.modified, default=None)
    if found is None and ckpt_path == "last":
        raise OptionError(
            "ckpt_path", "last", f"no last*.ckpt in {folder} to resume from (ckpt_path=auto starts fresh)"
        )
    if found is not None and ckpt_path is None:
        raise OptionError(
            "ckpt_path",
            None,
            f"{folder} holds {posixpath.basename(found)} of an earlier run, which a fresh start "
            "would overwrite; resume it with ckpt_path=auto, or start in another hydra.run.dir",
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


# Known noise, each harmless here; `extras.ignore_warnings=false` shows them again.
NOISE_WARNINGS = (
    r".*does not have many workers.*",  # the demo's one worker is the measured optimum on 2 cores
    r".*treespec.*deprecated.*",  # Lightning's own use of torch's pytree internals
    r".*sync_dist=True.*",  # per-set PSNR/SSIM are torchmetrics, already synced over ranks
    r".*Checkpoint directory .* exists and is not empty.*",  # resuming into the run folder is the point
    r".*is not a recognized `?--?precision.*",
)
NOISE_LOGS = ("💡 Tip", "litlogger", "LitLogger")


def _drop_noise(record: logging.LogRecord) -> bool:
    return not any(text in str(record.msg) for text in NOISE_LOGS)


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


def setup_logging(cfg: DictConfig) -> None:
    """Lightning's messages into Hydra's handlers (console and `<run>/<task>.log`); known noise filtered."""
    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logger = logging.getLogger(name)
        logger.handlers.clear()  # its own StreamHandler, not propagating: nothing reached the run's log file
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):  # a console: FILE_ONLY records were shown another way
            handler.addFilter(_not_file_only)
    if cfg.get("extras", {}).get("ignore_warnings", True):
        for pattern in NOISE_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_noise)


def print_config_tree(cfg: DictConfig, save_to: Path) -> None:
    """The resolved config, one branch per group, printed at start and saved beside the run (as the template does)."""
    tree = Tree("config", guide_style="dim")
    for key in cfg:
        value = cfg[key] if key != "hydra" else None
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key)).add(Syntax(text, "yaml", theme="ansi_dark"))
    save_to.write_text(print_rich(tree))


@contextlib.contextmanager
def run_guard(cfg: DictConfig) -> Iterator[None]:
    """Logging, the config tree, one training per folder; an expected failure is one `error:` line, also logged."""
    setup_logging(cfg)
    run_dir = Path(str(cfg.paths.output_dir))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.get("extras", {}).get("print_config", True) and rank_zero_only.rank == 0:  # type: ignore[attr-defined]
            print_config_tree(cfg, run_dir / "config_tree.log")
        with run_lock(run_dir):
            yield
    except (ExpectedError, SIGTERMException) as err:
        message, status = failure_message(as_typed(cfg, err), run_dir)
        log.error("error: %s", message, extra=FILE_ONLY)  # into the run's log file; stderr gets the plain line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)
