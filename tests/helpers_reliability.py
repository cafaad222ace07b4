"""Test-only callbacks for tests/test_reliability.py, loaded by training subprocesses through
``+callbacks.<name>._target_=helpers_reliability.<Class>`` with ``tests/`` on ``PYTHONPATH``."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """Sends ``signum`` (default SIGKILL) to this process when batch ``step`` starts, i.e. after ``step``
    optimiser steps have completed (and after every checkpoint saved at those steps). ``group=True`` signals the
    whole process group instead (every DDP rank at once, as a scheduler does): start the run in a session of its own."""

    def __init__(self, step: int, signum: int = int(signal.SIGKILL), group: bool = False) -> None:
        self.step = int(step)
        self.signum = int(signum)
        self.group = bool(group)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            if self.group:
                os.killpg(os.getpgrp(), self.signum)
            os.kill(os.getpid(), self.signum)


class StopAt(pl.Callback):
    """Global rank 0 sends ``signum`` to its whole process group (every DDP rank, as a scheduler does; start the run
    in a session of its own) once, at ``moment`` (``epoch_end`` or ``validation``: its first batch) of ``epoch``."""

    def __init__(self, moment: str, epoch: int, signum: int) -> None:
        self.moment, self.epoch, self.signum, self.fired = moment, int(epoch), int(signum), False

    def _now(self, trainer: pl.Trainer, moment: str) -> None:
        if moment == self.moment and trainer.current_epoch == self.epoch and trainer.is_global_zero and not self.fired:
            self.fired = True
            os.killpg(os.getpgrp(), self.signum)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._now(trainer, "epoch_end")

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, idx: int, dl: int = 0) -> None:
        if idx == 0:
            self._now(trainer, "validation")


class StepMarker(pl.Callback):
    """Writes the global step to ``path`` after each batch and sleeps ``delay`` seconds, so a test can wait
    for training to be under way and then signal the process while it is still training."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path = Path(path)
        self.delay = float(delay)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.path.write_text(str(trainer.global_step))
        if self.delay:
            time.sleep(self.delay)


class RankMarker(pl.Callback):
    """Writes ``rank<global rank>.json`` (world size, steps, pid, the data module's unpaired ratio) into the run
    folder when training ends, so a test can tell which processes trained which job of a sweep."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        facts = {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "pid": os.getpid(),
            "unpaired_ratio": getattr(trainer.datamodule, "unpaired_ratio", None),
        }
        (Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(facts))


class PoisonBatchAtStep(pl.Callback):
    """Fills the HR images of batch ``step`` with ``value`` (NaN by default), so that one batch's loss is
    non-finite while the weights stay finite: a corrupt sample, as far as training can tell."""

    def __init__(self, step: int, value: float = float("nan")) -> None:
        self.step = int(step)
        self.value = float(value)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            batch["hr"].fill_(self.value)


class Malicious:
    """Unpickling this runs ``os.system`` (creating ``marker``); a safe loader must refuse it unexecuted."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))
