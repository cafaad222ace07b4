"""Checkpoints written whole or not at all, with a SHA-256 of their tensors, and read with `weights_only=True`."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO

from drn_lightning.files import atomic_write, is_remote
from drn_lightning.models.weights import safe_load, with_digest
from drn_lightning.options import ExpectedError, OptionError

log = logging.getLogger(__name__)


class CheckpointWriteError(ExpectedError, OSError):
    """A checkpoint could not be written (disk full, read-only, ...); the previous file at that path is kept."""


def to_plain(obj: Any) -> Any:
    """OmegaConf containers and dict subclasses made plain (loadable with `weights_only=True`); the rest kept as is."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        items = {key: to_plain(value) for key, value in obj.items()}
        if type(obj) in (dict, OrderedDict, defaultdict) and all(items[k] is v for k, v in obj.items()):
            return obj
        return OrderedDict(items) if type(obj) is OrderedDict else items
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):  # a NamedTuple is kept
        converted = [to_plain(value) for value in obj]
        if type(obj) in (list, tuple) and all(a is b for a, b in zip(converted, obj)):
            return obj
        return converted if isinstance(obj, list) else tuple(converted)
    return obj


def _progress(count: int, completed: int | None = None) -> dict[str, int]:
    done = count if completed is None else completed
    return {"ready": count, "started": count, "processed": count, "completed": done}


def at_step_boundary(checkpoint: dict[str, Any]) -> None:
    """The checkpoint's fit-loop progress as mid-epoch after a batch, or between epochs: states Lightning 2.6 resumes
    exactly (saved after an epoch's batches it resumes one epoch ahead under `max_steps`; docs/library_internals.md)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not (epochs and batches):
        return
    now, total = batches["current"], batches["total"]["processed"]
    if now["processed"] and not batches["is_last_batch"]:  # mid-epoch (`max_steps` may have cut it short)
        epoch, done = epochs["current"]["ready"] - 1, now["processed"]
        stepped = loop.get("epoch_loop.state_dict", {})
        if now["completed"] == done and "_batches_that_stepped" in stepped:  # counted after the batch's hooks
            stepped["_batches_that_stepped"] -= 1
        batches.update(total=_progress(total, total - 1), current=_progress(done, done - 1))
        epoch_state = {"ready": epoch + 1, "started": epoch + 1, "processed": epoch, "completed": epoch}
    else:  # the epoch's batches all trained (or none of the next epoch's yet)
        epoch = epochs["current"]["ready"] if now["processed"] else epochs["current"]["processed"]
        batches.update(total=_progress(total), current=_progress(0), is_last_batch=False)
        if "epoch_loop.val_loop.batch_progress" in loop:
            loop["epoch_loop.val_loop.batch_progress"]["total"] = _progress(0)  # as at an epoch's start
        epoch_state = _progress(epoch)
    epochs.update(total=dict(epoch_state), current=dict(epoch_state))
    checkpoint["epoch"] = epoch_state["completed"]


WRITTEN_LIST = ".drn_checkpoints"  # per folder: the checkpoint files this run family wrote, the only ones it deletes


def _written(folder: Path) -> set[str]:
    listed = folder / WRITTEN_LIST
    return set(listed.read_text().splitlines()) if listed.is_file() else set()


def _record(folder: Path, names: set[str]) -> None:
    atomic_write(folder / WRITTEN_LIST, lambda handle: handle.write("\n".join(sorted(names)).encode()))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Whole-or-nothing writes with a digest, `weights_only` reads; ours without a digest need `allow_unverified`.
    Every checkpoint written or read passes here once, so here it becomes a state at a step boundary."""

    def __init__(self, allow_unverified: bool = False) -> None:
        super().__init__()
        self.allow_unverified = allow_unverified

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        at_step_boundary(checkpoint)
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
        if path.name not in _written(path.parent):
            _record(path.parent, _written(path.parent) | {path.name})

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Delete only a checkpoint this run family wrote into that folder (a user's file there is never touched)."""
        if is_remote(path):
            super().remove_checkpoint(os.fspath(path))
            return
        path = Path(path)
        names = _written(path.parent)
        if path.name in names and path.is_file() and not path.is_symlink():
            path.unlink()
            _record(path.parent, names - {path.name})
        elif path.exists():
            log.warning("%s: not removed: this run did not write it (%s lists what it did)", path, WRITTEN_LIST)

    def load_checkpoint(
        self, path: str | os.PathLike[str], map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load on CPU with `weights_only=True` whatever `weights_only` says; Lightning moves tensors later."""
        if weights_only is False:
            log.warning("%s: weights_only=False ignored; checkpoints are always read with weights_only=True", path)
        checkpoint = safe_load(path, allow_unverified=self.allow_unverified)
        if not (isinstance(checkpoint, dict) and "pytorch-lightning_version" in checkpoint):
            reason = "weights only, no training state to resume (a `drn-sr convert` or exported file?)"
            hint = f"to start from these weights use weights={path} instead"
            raise OptionError("ckpt_path", os.fspath(path), f"{reason}; {hint}")
        at_step_boundary(checkpoint)  # also a file written before this rewrite existed
        return checkpoint
