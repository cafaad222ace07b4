"""What keeps a run recoverable when something goes wrong.

* :class:`AtomicCheckpointIO` (always on, wired in ``drn_lightning.train``): checkpoints are written through
  ``files.atomic_write`` (temporary file, fsync, rename), so a kill or a full disk mid-write never leaves a
  truncated ``*.ckpt``; every checkpoint is read back with ``torch.load(weights_only=True)``, so a file
  whose unpickling would run code is refused before anything in it executes.
* Mid-epoch resume is Lightning's own: the train loader (``data.ResumableLoader``) saves and restores its place.
* ``callbacks.PreemptionCheckpoint``: on SIGTERM, SIGUSR1 or SIGUSR2, ``last.ckpt`` at the current step.
* :func:`run_lock`: one training per run folder.
* :func:`failure_message` / :data:`RUN_FAILURES`: the errors a run stops on by design, turned into one
  ``error:`` line by the entry point.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from drn_lightning.config import ConfigError
from drn_lightning.data.io import ImageReadError
from drn_lightning.files import atomic_write, is_remote
from drn_lightning.lit_module import NonFiniteLossError
from drn_lightning.models.official import CheckpointError, safe_load, with_digest

__all__ = [
    "RUN_FAILURES",
    "SIGTERM_EXIT_CODE",
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "failure_message",
    "run_lock",
    "to_plain",
]

log = logging.getLogger(__name__)

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
"""Exit status of a run stopped by SIGTERM after saving its checkpoint (the shell's convention for SIGTERM)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only, ...); the previous file at that path is kept."""


# ---------------------------------------------------------------------------------------------- checkpoint files


def to_plain(obj: Any) -> Any:
    """``obj`` with every OmegaConf container made a plain dict/list (and dict subclasses such as Lightning's
    ``AttributeDict`` made dicts), so the checkpoint unpickles under ``weights_only=True``. Tensors, and
    containers with nothing to convert (state dicts with their ``_metadata``), are returned as they are."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        items = {key: to_plain(value) for key, value in obj.items()}
        kept_type = type(obj) in (dict, OrderedDict, defaultdict)
        if kept_type and all(items[key] is value for key, value in obj.items()):
            return obj
        if type(obj) is OrderedDict:
            return OrderedDict(items)
        if type(obj) is defaultdict:
            rebuilt: defaultdict[Any, Any] = defaultdict(obj.default_factory)
            rebuilt.update(items)
            return rebuilt
        return items
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        converted = [to_plain(value) for value in obj]
        if all(a is b for a, b in zip(converted, obj)) and type(obj) in (list, tuple):
            return obj
        return converted if isinstance(obj, list) else tuple(converted)
    return obj


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write-then-rename: a kill mid-write leaves the previous `last.ckpt` intact, never a truncated one.

    Writing: an fsspec URL (``s3://``, ``gs://``, ``memory://``) goes through Lightning's own fsspec writer, which
    writes each checkpoint as one whole object (atomic on object stores); a local path through
    ``files.atomic_write`` (hidden ``.<name>.<random>.tmp`` in the target folder, fsync, rename, fsync
    of the folder). A failure (``ENOSPC``, ``EACCES``, ...) removes the temporary file and raises
    :class:`CheckpointWriteError` naming the file and the reason. A SIGKILL mid-write can leave only a
    hidden ``*.tmp`` file (never matched by ``ckpt_path=last``); the next successful write of the same
    checkpoint name deletes it.

    Reading: always ``weights_only=True`` (Lightning would otherwise follow torch's default or the
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable); a refused, empty, truncated or corrupt
    file raises :class:`~drn_lightning.models.official.CheckpointError` naming the file. Each checkpoint
    carries a SHA-256 of its tensors (``official.with_digest``), so flipped bytes, which ``torch.load``
    does not notice, are caught too.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        plain = with_digest(to_plain(checkpoint))  # SHA-256 of its tensors, checked when read back (safe_load)
        if is_remote(path):  # Lightning's fsspec writer: one whole object per write (atomic on object stores)
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
            failure = CheckpointWriteError(_write_failure(path, cause))
            failure.errno = cause.errno
            raise failure from cause
        _remove_stale_temporaries(path)

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Any = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load on CPU with ``weights_only=True`` whatever ``weights_only`` says; Lightning moves tensors later."""
        if weights_only is False:
            log.warning("%s: weights_only=False ignored; checkpoints are always read with weights_only=True", path)
        checkpoint = safe_load(path)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(
                f"{path}: not a Lightning checkpoint (found {type(checkpoint).__name__}, expected a dict)"
            )
        return checkpoint


def _write_failure(path: Path, err: OSError) -> str:
    """One sentence naming the file, the OS reason and, for a full disk, the free space left."""
    reason = err.strerror or str(err)
    message = f"{path}: cannot write checkpoint ({reason})"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(path.parent).free
            message += f"; {free / 2**20:.1f} MiB free on that filesystem"
        except OSError:
            pass
    existing = "the previous file at that path is kept" if path.exists() else "no file was written"
    return f"{message}; {existing}, no partial file is left"


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.*.tmp`` left by a writer of this same file that was killed mid-write."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


# ---------------------------------------------------------------------------------------------- run failures

RUN_FAILURES: tuple[type[BaseException], ...] = (
    NonFiniteLossError,
    CheckpointError,
    CheckpointWriteError,
    ImageReadError,
    SIGTERMException,
)
"""Errors a run stops on by design; their messages name the step, file or option, so a traceback adds nothing."""


def failure_message(err: BaseException, run_dir: str | os.PathLike[str] | None = None) -> tuple[str, int]:
    """(one-line message, exit status) for an error in :data:`RUN_FAILURES`."""
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
    """One training per run folder: the lock is held until the process ends (even killed), so a second training
    started in the same folder is refused before it touches checkpoints or logs. Only the launching process
    (global rank 0) takes it; the ranks Lightning's DDP launcher starts run in the same folder unrefused."""
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
        yield
        return
    path = Path(run_dir) / ".train.lock"
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: another training is running in this folder (it holds {path}); "
            "wait for it to end or give another hydra.run.dir"
        ) from None
    try:
        yield
    finally:
        lock.release()
