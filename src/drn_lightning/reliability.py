"""What keeps a run recoverable when something goes wrong.

* :class:`AtomicCheckpointIO` (always on, wired in ``build_trainer``): checkpoints are written to a hidden
  temporary file, fsynced and renamed into place, so a kill or a full disk mid-write never leaves a
  truncated ``*.ckpt``; every checkpoint is read back with ``torch.load(weights_only=True)``, so a file
  whose unpickling would run code is refused before anything in it executes.
* :class:`ExactResume` (callback): stores the position inside the epoch and the RNG states in each
  checkpoint and, on resume, fast-forwards the train batch sampler past the batches already trained
  on and restores the RNG states, so a run resumed mid-epoch continues with exactly the batches the
  uninterrupted run would have used (crops and flips included: they come from per-sample seeds).
* :class:`PreemptionCheckpoint` (callback): on SIGTERM (SLURM preemption) Lightning stops at the next
  batch boundary; this callback then saves ``last.ckpt`` so ``ckpt_path=last`` resumes from that step.
* :func:`failure_message` / :data:`RUN_FAILURES`: the errors a run stops on by design, turned into one
  ``error:`` line by the entry point.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random
import shutil
import signal
import tempfile
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Sampler

from drn_lightning.data.io import ImageReadError
from drn_lightning.lit_module import NonFiniteLossError
from drn_lightning.models.official import CheckpointError, safe_load

__all__ = [
    "RUN_FAILURES",
    "SIGTERM_EXIT_CODE",
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "ExactResume",
    "PreemptionCheckpoint",
    "capture_rng_state",
    "failure_message",
    "read_torch_file",
    "restore_rng_state",
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

    Writing: hidden ``.<name>.<random>.tmp`` in the target folder -> fsync -> ``os.replace`` -> fsync of the
    folder. A failure (``ENOSPC``, ``EACCES``, ...) removes the temporary file and raises
    :class:`CheckpointWriteError` naming the file and the reason. A SIGKILL mid-write can leave only a
    hidden ``*.tmp`` file (never matched by ``ckpt_path=last``); the next successful write of the same
    checkpoint name deletes it.

    Reading: always ``weights_only=True`` (Lightning would otherwise follow torch's default or the
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable); a refused, empty, truncated or corrupt
    file raises :class:`~drn_lightning.models.official.CheckpointError` naming the file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        checkpoint = to_plain(checkpoint)
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the checkpoint the usual umask permissions
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        except OSError as err:
            failure = CheckpointWriteError(_write_failure(path, err))
            failure.errno = err.errno
            raise failure from err
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
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
        checkpoint = read_torch_file(path)
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"{path}: not a Lightning checkpoint (found {type(checkpoint).__name__}, expected a dict)")
        return checkpoint


def read_torch_file(path: str | os.PathLike[str]) -> Any:
    """Checkpoints are read like weights files: `weights_only=True`, errors naming the file and the reason."""
    return safe_load(path)


def _umask_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _umask_file_mode()


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


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.*.tmp`` left by a writer of this same file that was killed mid-write."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors/lists/ints (``weights_only``-loadable)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": int(version), "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["gauss"])
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------- exact resume


class _ResumedBatchSampler(Sampler[list[int]]):
    """Wraps the train batch sampler for the first epoch after a resume: skips the batches already trained
    on (index lists only, no data is read) and restores the RNG states just before the first batch is
    loaded. Later epochs pass straight through. ``sampler`` is forwarded, so Lightning's per-epoch
    ``batch_sampler.sampler.set_epoch`` still reaches the wrapped sampler."""

    def __init__(self, inner: Any, skip: int, epoch: int, on_first_batch: Callable[[], None]) -> None:
        self.inner = inner
        self._skip = skip
        self._epoch = epoch
        self._on_first_batch: Callable[[], None] | None = on_first_batch

    @property
    def sampler(self) -> Any:
        return getattr(self.inner, "sampler", self.inner)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[int]]:
        batches: Iterator[list[int]] = iter(self.inner)
        skip, self._skip = self._skip, 0
        if skip:
            current = getattr(self.sampler, "epoch", self._epoch)
            if current == self._epoch:
                batches = itertools.islice(batches, skip, None)
            else:
                log.warning("resume: sampler is at epoch %s, checkpoint at epoch %s; not skipping", current, self._epoch)
        hook, self._on_first_batch = self._on_first_batch, None
        if hook is not None:
            hook()
        yield from batches


def _rebuild_loader(loader: DataLoader[Any], batch_sampler: Sampler[list[int]]) -> DataLoader[Any]:
    """The same DataLoader with another batch sampler (DataLoader forbids swapping it after construction)."""
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "prefetch_factor": loader.prefetch_factor,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, **kwargs)


class ExactResume(pl.Callback):
    """Makes a mid-epoch resume continue exactly where the checkpoint was taken.

    Lightning restores weights, optimiser, scheduler and loop counters, but a plain ``DataLoader`` restarts
    its epoch from the first batch: a run resumed after ``k`` batches of an epoch would train on batches
    ``0..n-k-1`` again instead of ``k..n-1``, and the crop/flip RNG would restart from the seed. This
    callback saves ``{epoch, batches already drawn in it, RNG states}`` in every checkpoint and, when
    resuming, wraps the train loader's batch sampler so its first epoch skips those batches and restores
    the RNG states right before the first batch is loaded.

    The DataModules' crops and flips come from per-sample seeds (``MixedBatchSampler(keyed=True)``), so the
    resumed batches are the same tensors with any ``num_workers`` (bit-identical weights, tested with 0 and
    2 workers). Under DDP each rank resumes its own batches and crops, but the global RNG states are restored
    in a single process only (the checkpoint holds rank 0's); DRN's training step draws nothing from them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, Any] | None = None
        self._wrapped_datamodule: Any = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or datamodule is self._wrapped_datamodule:
            return
        original = datamodule.train_dataloader

        def train_dataloader() -> Any:
            return self._resumable(original())

        train_dataloader.__doc__ = original.__doc__
        datamodule.train_dataloader = train_dataloader
        self._wrapped_datamodule = datamodule

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._wrapped_datamodule is not None and "train_dataloader" in vars(self._wrapped_datamodule):
            del self._wrapped_datamodule.train_dataloader  # back to the class's own method
        self._wrapped_datamodule = None

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        batches = trainer.num_training_batches
        return {
            "epoch": int(trainer.current_epoch),
            "batches_drawn": int(progress.ready),
            "batches_per_epoch": int(batches) if batches != float("inf") else -1,
            "rng": capture_rng_state(),
            "world_size": int(trainer.world_size),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict) if state_dict else None

    def _resumable(self, loader: Any) -> Any:
        state, self._pending = self._pending, None
        if state is None:
            return loader
        drawn, length = state["batches_drawn"], state["batches_per_epoch"]
        skip = drawn if 0 < drawn < length else 0
        world = self._trainer.world_size if self._trainer is not None else 1
        restore_rng = world == 1 and state.get("world_size", 1) == 1
        if not isinstance(loader, DataLoader) or type(loader) is not DataLoader or loader.batch_sampler is None:
            log.warning("resume: train loader is a %s; cannot fast-forward it, the epoch restarts", type(loader).__name__)
            if restore_rng:
                restore_rng_state(state["rng"])
            return loader
        if skip and len(loader.batch_sampler) != length:
            log.warning("resume: %d batches per epoch now, %d in the checkpoint; the epoch restarts", len(loader.batch_sampler), length)
            skip = 0
        if skip:
            log.info("resume: skipping the %d batches of epoch %d already trained on", skip, state["epoch"])

        def on_first_batch() -> None:
            if restore_rng:
                restore_rng_state(state["rng"])

        # Lightning warns that a plain DataLoader cannot resume mid-epoch; this one now does.
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
        return _rebuild_loader(loader, _ResumedBatchSampler(loader.batch_sampler, skip, state["epoch"], on_first_batch))


# ---------------------------------------------------------------------------------------------- preemption


class PreemptionCheckpoint(pl.Callback):
    """On SIGTERM, save ``last.ckpt`` at the step Lightning stopped on, then let the run exit.

    Lightning's own SIGTERM handler only sets a flag; the training loop raises ``SIGTERMException`` at the
    end of the current batch (after the optimiser step), without saving. This callback catches that
    exception in ``on_exception`` and writes a full checkpoint (weights, optimiser, loops, ExactResume
    state) to the ModelCheckpoint folder as ``last.ckpt`` (or ``dirpath``/``filename`` when given), so
    ``ckpt_path=last hydra.run.dir=<same dir>`` continues from that step. Other exceptions (e.g. a
    non-finite loss) save nothing, so a bad state never replaces the last good checkpoint.
    """

    def __init__(self, dirpath: str | os.PathLike[str] | None = None, filename: str = "last") -> None:
        super().__init__()
        self.dirpath = None if dirpath is None else str(dirpath)
        self.filename = filename
        self.saved_path: str | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        model_checkpoint = next((cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)), None)
        dirpath = self.dirpath or (model_checkpoint.dirpath if model_checkpoint is not None else None)
        target = Path(dirpath or os.path.join(trainer.default_root_dir, "checkpoints"))
        target = target / f"{self.filename}{ModelCheckpoint.FILE_EXTENSION}"
        if model_checkpoint is not None and model_checkpoint.dirpath and Path(model_checkpoint.dirpath) == target.parent:
            # Tell ModelCheckpoint this file is its `last`: after the resume it then overwrites it, instead of
            # keeping it and writing `last-v1.ckpt` next to it.
            model_checkpoint.last_model_path = str(target)
        trainer.save_checkpoint(target, weights_only=False)
        self.saved_path = str(target)
        if trainer.is_global_zero:
            log.warning("SIGTERM: saved checkpoint at global step %d to %s", trainer.global_step, target)


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
    return str(err), 1
