"""Issue 21: a stop at any moment (SIGTERM, SIGUSR1, SIGUSR2, or a kill) and the same command again end with the
weights, optimiser and `epoch` of the uninterrupted run; so does a finished run continued with a larger max_steps.

Fast tests train in this process: a tiny x2 DRN, 2 steps per epoch, 3 epochs (`max_steps` set, as in the paper's
recipe), validation after every epoch on 2 images, `last.ckpt` every 3 steps (mid-epoch) and at the end. A kill is a
`Killed` exception raised from a callback: the process ends there, with what it had written. The 2-rank DDP runs are
subprocesses, in the slow suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from conftest import CPU_DDP, TINY_TRAIN, compose_train
from drn_lightning.train import prepare, train
from drn_lightning.training.checkpoint_io import AtomicCheckpointIO
from drn_lightning.training.run import SIGTERM_EXIT_CODE, failure_message

pytestmark = pytest.mark.reliability

PER_EPOCH, EPOCHS = 2, 3
EXACT = [
    *TINY_TRAIN,
    "scale=2",
    "model.net.n_feats=4",
    "model.net.n_blocks=1",
    "data.patch_size=16",
    f"data.steps_per_epoch={PER_EPOCH}",
    f"trainer.max_steps={PER_EPOCH * EPOCHS}",
    "trainer.max_epochs=10",
    "trainer.limit_val_batches=2",  # two images: a stop after the first is mid-validation
    "trainer.check_val_every_n_epoch=1",
    "trainer.deterministic=true",
    "checkpoint_every_n_steps=3",
    "torch_threads=1",
    "~callbacks.image_grid",
    "~callbacks.lr_monitor",
]


class Killed(BaseException):
    """What `kill -9` does to the run, raised where a callback says: nothing after it runs."""


class StopAt(pl.Callback):
    """Sends `signum` to this process (None: raises Killed) once, at `moment` of epoch `epoch`, batch `index`."""

    def __init__(self, moment: str, epoch: int, index: int = 0, signum: int | None = None) -> None:
        self.moment, self.epoch, self.index, self.signum, self.fired = moment, epoch, index, signum, False

    def _now(self, trainer: pl.Trainer, moment: str, index: int = 0) -> None:
        if (moment, trainer.current_epoch, index) == (self.moment, self.epoch, self.index) and not self.fired:
            self.fired = True
            if self.signum is None:
                raise Killed
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._now(trainer, "train_batch", idx)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, idx: int, dl: int = 0) -> None:
        self._now(trainer, "validation", idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._now(trainer, "epoch_end")


def fit(run: Path, cache: Path, *overrides: str, callback: pl.Callback | None = None) -> None:
    """`python -m drn_lightning.train` in this process (ckpt_path=auto: the run folder's last.ckpt if any)."""
    cfg = compose_train([*EXACT, *overrides], run, cache)
    datamodule, model, trainer = prepare(cfg)
    if callback is not None:
        trainer.callbacks.append(callback)
    train(cfg, datamodule, model, trainer)


def last(run: Path) -> dict[str, Any]:
    return AtomicCheckpointIO().load_checkpoint(run / "checkpoints" / "last.ckpt")


def assert_same_end(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Same step and epoch, bit-identical weights and Adam moments."""
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"])
    differ = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(a['state_dict'])} weight tensors differ"
    for index, state in a["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer_states"][0]["state"][index][name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> dict[str, Any]:
    run = tmp_path_factory.mktemp("uninterrupted")
    fit(run, demo_cache)
    return last(run)


STOPS = {  # id: (signal, None for a kill; moment; epoch; batch index)
    "SIGTERM_mid_epoch": (signal.SIGTERM, "train_batch", 1, 1),
    "SIGUSR1_mid_validation": (signal.SIGUSR1, "validation", 1, 0),  # the validation loop stops after this batch
    "SIGUSR2_last_validation_batch": (signal.SIGUSR2, "validation", 1, 1),  # stops after the epoch: was one ahead
    "SIGTERM_right_after_an_epoch": (signal.SIGTERM, "epoch_end", 1, 0),  # was one ahead
    "SIGTERM_final_validation": (signal.SIGTERM, "validation", 2, 1),
    "kill_mid_epoch": (None, "train_batch", 1, 1),
    "kill_in_validation": (None, "validation", 1, 1),
    "kill_right_after_an_epoch": (None, "epoch_end", 1, 0),
    "kill_final_validation": (None, "validation", 2, 1),  # resumes from the step-6 last.ckpt: nothing left to train
}


@pytest.mark.parametrize(("signum", "moment", "epoch", "index"), list(STOPS.values()), ids=list(STOPS))
def test_a_stop_at_any_moment_resumes_to_the_uninterrupted_run(
    tmp_path: Path, demo_cache: Path, reference: dict[str, Any], signum: int | None, moment: str, epoch: int, index: int
) -> None:
    with pytest.raises(Killed if signum is None else SIGTERMException) as stop:
        fit(tmp_path, demo_cache, callback=StopAt(moment, epoch, index, signum))
    if signum is not None:
        name = signal.Signals(signum).name
        message, status = failure_message(stop.value, tmp_path)
        assert (message, status) == (f"stopped by {name} (preemption); resume with ckpt_path=last "
                                     f"hydra.run.dir={tmp_path}", SIGTERM_EXIT_CODE)  # fmt: skip
    saved = last(tmp_path)
    assert saved["epoch"] == saved["global_step"] // PER_EPOCH  # epochs whose batches are all trained
    fit(tmp_path, demo_cache)
    assert_same_end(last(tmp_path), reference)


def test_a_kill_during_the_final_evaluation_resumes_to_the_same_end(
    tmp_path: Path, demo_cache: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final last.ckpt is written when training ends (Lightning wrote it only in a process that had saved nothing,
    so the uninterrupted run's was the step-3 one and a resumed run's another): the rerun trains nothing."""
    import drn_lightning.eval

    def killed(*args: Any) -> None:
        raise Killed

    monkeypatch.setattr(drn_lightning.eval, "final_evaluation", killed)  # train() imports it when it runs
    with pytest.raises(Killed):
        fit(tmp_path, demo_cache, "test_after_fit=true")
    assert_same_end(last(tmp_path), reference)
    assert reference["epoch"] == EPOCHS  # whichever callback wrote it last (was 2 after a validation save, 3 after)
    fit(tmp_path, demo_cache)
    assert_same_end(last(tmp_path), reference)


def test_two_stops_in_a_row_resume_exactly(tmp_path: Path, demo_cache: Path, reference: dict[str, Any]) -> None:
    """Killed in epoch 2 after the step-3 save, then SIGTERM right after epoch 1 of the resumed run ends."""
    with pytest.raises(Killed):
        fit(tmp_path, demo_cache, callback=StopAt("train_batch", 2, 0))
    with pytest.raises(SIGTERMException):
        fit(tmp_path, demo_cache, callback=StopAt("epoch_end", 1, signum=signal.SIGTERM))
    fit(tmp_path, demo_cache)
    assert_same_end(last(tmp_path), reference)


# Lightning's own ModelCheckpoint in place of ours; its saves land on each epoch's last batch (steps 2, 4, 6)
STOCK_CHECKPOINT = [
    "~callbacks.model_checkpoint",
    "~callbacks.last_checkpoint",
    "~callbacks.preemption",
    "+callbacks.stock={_target_: pytorch_lightning.callbacks.ModelCheckpoint, dirpath: '${paths.output_dir}/checkpoints',"
    f" save_last: true, every_n_train_steps: {PER_EPOCH}}}",
]


def test_lightnings_own_checkpoint_callback_resumes_exactly_too(
    tmp_path: Path, demo_cache: Path, reference: dict[str, Any]
) -> None:
    """Every save and resume passes AtomicCheckpointIO, which makes it a step-boundary state, whichever callback
    saved it: a stock save at an epoch's last batch resumed with its epoch counters one behind."""
    with pytest.raises(Killed):
        fit(tmp_path, demo_cache, *STOCK_CHECKPOINT, callback=StopAt("train_batch", 2, 0))
    assert last(tmp_path)["global_step"] == 2 * PER_EPOCH
    fit(tmp_path, demo_cache, *STOCK_CHECKPOINT)
    assert_same_end(last(tmp_path), reference)


@pytest.mark.parametrize("first_steps", [5, 4], ids=["ends_mid_epoch", "ends_with_an_epoch"])
def test_a_finished_run_continued_with_more_steps_matches_one_that_had_them_from_the_start(
    tmp_path: Path, demo_cache: Path, first_steps: int
) -> None:
    """Constant LR: the cosine schedule's length is max_steps, so with it the two runs differ by design."""
    fit(tmp_path / "reference", demo_cache, "model.scheduler=null")
    fit(tmp_path / "run", demo_cache, "model.scheduler=null", f"trainer.max_steps={first_steps}")
    assert last(tmp_path / "run")["global_step"] == first_steps
    fit(tmp_path / "run", demo_cache, "model.scheduler=null")
    assert_same_end(last(tmp_path / "run"), last(tmp_path / "reference"))


# ---------------------------------------------------------------------------------------------- 2-rank CPU DDP


def _ddp_run(run: Path, demo_cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """The 2-rank CPU DDP training command, in its own session (a signal to the group reaches both ranks)."""
    from test_reliability import _env, _train_cmd

    cmd = _train_cmd(run, [*EXACT, *CPU_DDP, *extra], tiny=False)
    return subprocess.run(cmd, env=_env(demo_cache), cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=600, start_new_session=True)  # fmt: skip


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> dict[str, Any]:
    """The uninterrupted 2-rank run's last checkpoint, trained once for every stop below."""
    run = tmp_path_factory.mktemp("ddp_uninterrupted")
    done = _ddp_run(run, demo_cache)
    assert done.returncode == 0, done.stderr[-3000:]
    return last(run)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "signum"),
    [("epoch_end", signal.SIGKILL), ("epoch_end", signal.SIGTERM), ("validation", signal.SIGUSR1)],
    ids=["SIGKILL_after_an_epoch", "SIGTERM_after_an_epoch", "SIGUSR1_in_validation"],
)
def test_two_rank_ddp_stopped_after_an_epoch_resumes_exactly(
    tmp_path: Path, demo_cache: Path, ddp_reference: dict[str, Any], moment: str, signum: signal.Signals
) -> None:
    """Both ranks signalled (the process group, as a scheduler does) right after epoch 1 ends or in its validation;
    the same command again ends as the uninterrupted 2-rank run. Before, SIGUSR1 in validation hung in 4 of 7 tries:
    Lightning's SIGTERM handler broadcasts from inside the handler, while the other rank is in another collective."""
    stopper = ["+callbacks.stop._target_=helpers_reliability.StopAt", f"+callbacks.stop.moment={moment}",
               "+callbacks.stop.epoch=1", f"+callbacks.stop.signum={int(signum)}"]  # fmt: skip
    stopped = _ddp_run(tmp_path, demo_cache, *stopper)
    expected = -signal.SIGKILL if signum == signal.SIGKILL else SIGTERM_EXIT_CODE
    assert stopped.returncode == expected, stopped.stderr[-3000:]
    resumed = _ddp_run(tmp_path, demo_cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_end(last(tmp_path), ddp_reference)
