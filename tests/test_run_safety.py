"""Issue 15: a training run cannot be made to delete, lose or overwrite what is not its own, and each failure
gives one `error:` line (crafted checkpoint paths, a periodic last.ckpt, one-line errors, the run-folder lock,
concurrent writers). Training subprocesses reuse the tiny settings and helpers of tests/test_reliability.py."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch._utils import ExceptionWrapper

from conftest import TINY_TRAIN, compose_train
from drn_lightning.data.io import ImageReadError
from drn_lightning.files import write_json
from drn_lightning.training.callbacks import RunCheckpoint
from drn_lightning.training.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from drn_lightning.training.run import failure_message
from test_reliability import REPO, STEPS, TINY, _env, _train_cmd, cache, ckpt_files, error_lines, load, train

pytestmark = pytest.mark.reliability
__all__ = ["cache"]  # the module-scoped demo-photo cache fixture, shared with tests/test_reliability.py

KILL_AT_3 = ["+callbacks.killer._target_=helpers_reliability.KillAtStep", "+callbacks.killer.step=3"]


def _png(path: Path, height: int, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _victims(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "victim"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "precious.txt").write_text("keep me")
    lone = tmp_path / "precious.ckpt"
    lone.write_text("keep me too")
    return folder, lone


# ---------------------------------------------------------------------------------------------- 1. crafted paths


def test_checkpoint_state_naming_paths_outside_the_folder_is_dropped_and_never_removed(tmp_path: Path) -> None:
    folder, lone = _victims(tmp_path)
    dirpath = tmp_path / "run" / "checkpoints"
    dirpath.mkdir(parents=True)
    (dirpath / "escape").symlink_to(folder)
    callback = RunCheckpoint(dirpath=str(dirpath), monitor="val/psnr", mode="max", save_top_k=1)
    callback.load_state_dict(
        {
            "dirpath": str(dirpath),
            "best_model_score": torch.tensor(99.0),
            "best_model_path": f"{dirpath}/../../victim",
            "last_model_path": str(dirpath / "escape"),
            "kth_best_model_path": str(lone),
            "best_k_models": {str(lone): torch.tensor(99.0), str(dirpath / "ok.ckpt"): torch.tensor(1.0)},
            "kth_value": torch.tensor(99.0),
        }
    )
    assert (callback.best_model_path, callback.last_model_path, callback.kth_best_model_path) == ("", "", "")
    assert callback.best_k_models == {} and callback.best_model_score is None

    io = AtomicCheckpointIO()  # ModelCheckpoint deletes through it (docs/library_internals.md)
    theirs = dirpath / "theirs.ckpt"
    theirs.write_text("not written by this run")
    for path in (f"{dirpath}/../../victim", str(dirpath / "escape"), str(lone), str(dirpath), str(theirs)):
        io.remove_checkpoint(path)
    inside = dirpath / "step2.ckpt"
    io.save_checkpoint({"state_dict": {}, "pytorch-lightning_version": "2.6.6"}, inside)
    io.remove_checkpoint(inside)
    assert not inside.exists() and theirs.is_file() and lone.is_file()
    assert (folder / "sub" / "precious.txt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("route", ["dotdot", "symlink", "absolute"])
def test_crafted_resume_checkpoint_cannot_delete_outside_the_run(tmp_path: Path, cache: Path, route: str) -> None:
    """A real last.ckpt whose ModelCheckpoint state (tensors and strings only) names a victim folder and file: the
    resumed run trains on, the victims survive, and a warning names the checkpoint file."""
    folder, lone = _victims(tmp_path)
    source = tmp_path / "source"
    assert train(source, cache, "trainer.max_steps=2").returncode == 0
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    target = {"dotdot": f"{run}/checkpoints/../../victim", "symlink": f"{run}/checkpoints/escape"}.get(
        route, str(folder)
    )
    (run / "checkpoints" / "escape").symlink_to(folder)
    crafted = load(source / "checkpoints" / "last.ckpt")
    states = [v for k, v in crafted["callbacks"].items() if "Checkpoint" in k and "best_model_path" in v]
    assert states
    for state in states:
        state.update(dirpath=str(run / "checkpoints"), best_model_path=target, last_model_path=target)
        state.update(kth_best_model_path=str(lone), best_k_models={str(lone): torch.tensor(1.0)})
    planted = run / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(crafted, planted)  # crafted, with a valid digest (it is no signature)
    resumed = train(run, cache, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (folder / "sub" / "precious.txt").read_text() == "keep me" and lone.read_text() == "keep me too"
    assert f"{planted}: ignored paths outside the checkpoint folder" in resumed.stdout + resumed.stderr
    assert load(planted)["global_step"] == STEPS


def test_a_checkpoint_folder_shared_with_other_files_loses_none_of_them(
    tmp_path: Path, demo_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both checkpoint callbacks pointed at a folder with a user's files, resumed from a checkpoint whose callback
    state names them as the best, the k-th best and the last checkpoint: each is replaced in turn, none is deleted."""
    from drn_lightning.train import prepare
    from drn_lightning.train import train as fit

    shared = tmp_path / "shared"
    shared.mkdir()
    precious, notes = shared / "precious.txt", shared / "notes.ckpt"
    precious.write_text("keep me")
    notes.write_text("my notes")
    tiny = [*TINY_TRAIN, "scale=2", "model.net.n_feats=4", "model.net.n_blocks=1", "data.patch_size=16",
            "checkpoint_every_n_steps=1", "~callbacks.image_grid", "~callbacks.lr_monitor"]  # fmt: skip

    def run(folder: Path, *extra: str) -> None:
        cfg = compose_train([*tiny, *extra], folder, demo_cache)
        fit(cfg, *prepare(cfg))

    run(tmp_path / "source")
    crafted = load(tmp_path / "source" / "checkpoints" / "last.ckpt")
    states = [v for v in crafted["callbacks"].values() if "best_model_path" in v]
    for state in states:
        state.update(dirpath=str(shared), best_model_path=str(notes), last_model_path=str(precious))
        state.update(kth_best_model_path=str(notes), best_k_models={str(notes): torch.tensor(-1.0)})
        state.update(best_model_score=torch.tensor(-1.0), kth_value=torch.tensor(-1.0))
    AtomicCheckpointIO().save_checkpoint(crafted, tmp_path / "crafted.ckpt")
    on_shared = [f"callbacks.{name}.dirpath={shared}" for name in ("model_checkpoint", "last_checkpoint")]
    run(tmp_path / "run", *on_shared, f"ckpt_path={tmp_path / 'crafted.ckpt'}", "trainer.max_steps=4",
        "trainer.max_epochs=2")  # fmt: skip
    assert precious.read_text() == "keep me" and notes.read_text() == "my notes"
    names = ckpt_files(shared)
    assert "last.ckpt" in names and len([n for n in names if n.startswith("best-")]) == 1, names
    refused = {r.getMessage().split(":")[0] for r in caplog.records if "this run did not write it" in r.getMessage()}
    assert refused == {str(precious), str(notes)}


# ---------------------------------------------------------------------------------------------- 2. periodic last


@pytest.mark.slow
def test_last_ckpt_exists_before_the_first_validation(tmp_path: Path, cache: Path) -> None:
    """The default checkpoint callback (monitor val/psnr, validation at epoch end): killed at step 3 of a 6-step
    epoch, before validation ever ran, the run still has last.ckpt at step 2 (checkpoint_every_n_steps=2)."""
    mine = ("callbacks.model_checkpoint.", "trainer.limit_val_batches", "data.steps_per_epoch")
    defaults = [o for o in TINY if not o.startswith(mine)]
    run = tmp_path / "run"
    with_val = [*defaults, "data.steps_per_epoch=6", "trainer.limit_val_batches=1", "checkpoint_every_n_steps=2"]
    killed = train(run, cache, *with_val, *KILL_AT_3, tiny=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert ckpt_files(run / "checkpoints") == ["last.ckpt"]
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    resumed = train(run, cache, *with_val, tiny=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    names = ckpt_files(run / "checkpoints")
    assert "last.ckpt" in names and not any(n.startswith("last-v") for n in names)
    assert any(n.startswith("best-") for n in names) and load(run / "checkpoints" / "last.ckpt")["global_step"] == 6


# ---------------------------------------------------------------------------------------------- 3. one-line errors


def _data_case(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Overrides training on a folder broken in one way, and the path the error line must name."""
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    hr.mkdir()
    lr_dir = "null"
    if case == "empty_folder":
        named = str(hr)
    elif case == "images_smaller_than_patch":
        named = str(_png(hr / "a.png", 8, 8).parent)
    elif case == "missing_lr_file":  # a.png has its x2 LR file, b.png has none
        _png(hr / "a.png", 64, 64), _png(hr / "b.png", 64, 64), _png(lr / "X2" / "ax2.png", 32, 32)
        named, lr_dir = str(lr / "X2" / "bx2.png"), str(lr)
    elif case == "lr_size_mismatch":  # 30 x 30 where 64 / 2 = 32 is due
        _png(hr / "a.png", 64, 64)
        named, lr_dir = str(_png(lr / "X2" / "ax2.png", 30, 30)), str(lr)
    else:  # a PNG cut in half, first decoded in a DataLoader worker
        for name in ("a", "b", "c"):
            _png(hr / f"{name}.png", 64, 64)
        data = (hr / "c.png").read_bytes()
        (hr / "c.png").write_bytes(data[: len(data) // 2])
        named = str(hr / "c.png")
    overrides = ["data=df2k", f"data.train.hr_dir={hr}", f"data.train.lr_dir={lr_dir}", "~data.val_sets"]
    overrides.append(f"data.train.cache_dir={tmp_path / 'lr_cache'}")
    if case == "truncated_png_in_worker":
        overrides.append("data.num_workers=2")
    return overrides, named


DATA_CASES = ["empty_folder", "images_smaller_than_patch", "missing_lr_file", "lr_size_mismatch"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", [*DATA_CASES, "truncated_png_in_worker", "monitor_typo", "weights_only_ckpt_path", "disk_full_at_save"]
)
def test_each_failure_is_one_error_line_naming_the_file_or_option(tmp_path: Path, cache: Path, case: str) -> None:
    run, limit, status = tmp_path / "run", None, 2
    if case in DATA_CASES or case == "truncated_png_in_worker":
        overrides, named = _data_case(tmp_path, case)
        status = 1 if case == "truncated_png_in_worker" else 2
    elif case == "monitor_typo":  # known at start: the module logs val/psnr, val/demo/psnr, ...
        overrides, named = ["callbacks.model_checkpoint.monitor=val/pnsr"], "callbacks.model_checkpoint.monitor="
    elif case == "weights_only_ckpt_path":  # `drn-sr convert` to the authors' .pt and back: weights, no state
        from drn_lightning.cli import main as drn_sr

        assert train(tmp_path / "source", cache, "trainer.max_steps=2").returncode == 0
        weights = tmp_path / "weights.ckpt"
        assert drn_sr(["convert", str(tmp_path / "source" / "checkpoints" / "last.ckpt"), "-o", f"{weights}.pt"]) == 0
        assert drn_sr(["convert", f"{weights}.pt", "-o", str(weights)]) == 0
        overrides, named = [f"ckpt_path={weights}"], f"ckpt_path='{weights}'"
    else:  # a file-size limit below one checkpoint (demo photos and LR cache made first): the save fails
        assert train(tmp_path / "prime", cache, "trainer.max_steps=1").returncode == 0
        overrides, named, limit, status = [], str(run / "checkpoints" / "step2.ckpt"), 60_000, 1

    def limit_file_size() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = _train_cmd(run, overrides)
    result = subprocess.run(
        cmd, cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size
    )
    assert result.returncode == status, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert named in line, line
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if case not in ("truncated_png_in_worker", "disk_full_at_save"):
        assert not (run / "checkpoints").exists()  # refused before the first step


@pytest.mark.parametrize("limit", [100, 20_000, 60_000, 90_000])
def test_disk_full_inside_torch_save_names_the_file_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """ENOSPC raised by the file itself while torch's zip writer streams into it: torch then raises its own
    RuntimeError ("unexpected pos") when closing; the error is still the one-line CheckpointWriteError."""
    import drn_lightning.training.checkpoint_io as checkpoint_io

    state = {"state_dict": {"w": torch.arange(25_000.0)}, "global_step": 3}
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(state, last)
    before = last.read_bytes()
    real = checkpoint_io.atomic_write

    class FullDisk:
        def __init__(self, handle: Any) -> None:
            self.handle, self.written = handle, 0

        def write(self, data: bytes) -> int:
            if self.written + len(data) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.handle.write(data)

        def flush(self) -> None:
            self.handle.flush()

    monkeypatch.setattr(checkpoint_io, "atomic_write", lambda path, write: real(path, lambda h: write(FullDisk(h))))
    with pytest.raises(CheckpointWriteError) as info:
        AtomicCheckpointIO().save_checkpoint({**state, "global_step": 4}, last)
    message, status = failure_message(info.value)
    assert status == 1 and message.startswith(f"{last}: cannot write checkpoint (No space left on device)")
    assert "\n" not in message and info.value.errno == errno.ENOSPC
    assert last.read_bytes() == before and ckpt_files(tmp_path) == ["last.ckpt"]


def test_an_error_reraised_from_a_loader_worker_is_its_own_one_line_message() -> None:
    try:
        raise ImageReadError("/data/c.png: cannot decode image (truncated or corrupt?): image file is truncated")
    except ImageReadError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ImageReadError) as info:
        wrapper.reraise()
    assert "Original Traceback" in str(info.value)
    assert failure_message(info.value) == (
        "/data/c.png: cannot decode image (truncated or corrupt?): image file is truncated",
        1,
    )


@pytest.mark.slow
def test_unwritable_results_json_is_refused_before_evaluating(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cmd = [sys.executable, "-m", "drn_lightning.eval", "scale=2", "data.root=/nonexistent"]
    cmd += [f"results_json={blocker}/results.json", f"hydra.run.dir={tmp_path / 'eval'}"]
    result = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result.stderr) == [
        f"error: results_json='{blocker}/results.json': cannot write there: {blocker} is a file, not a folder"
    ]  # named before the missing data.root is even looked at


# ---------------------------------------------------------------------------------------------- 4. concurrency


@pytest.mark.slow
def test_second_training_in_the_same_run_folder_is_refused_and_the_lock_dies_with_the_first(
    tmp_path: Path, cache: Path
) -> None:
    run, marker = tmp_path / "run", tmp_path / "step"
    marking = ["+callbacks.marker._target_=helpers_reliability.StepMarker", f"+callbacks.marker.path={marker}"]
    first = subprocess.Popen(
        _train_cmd(run, [*marking, "+callbacks.marker.delay=5.0"]),
        cwd=REPO,
        env=_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (marker.is_file() and marker.read_text().strip()):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first training never reached its first step"
            time.sleep(0.1)
        logs_before = sorted(p.relative_to(run) for p in (run / "csv").rglob("*"))
        second = train(run, cache)
        assert second.returncode == 2, second.stderr[-3000:]
        assert error_lines(second.stderr) == [
            f"error: hydra.run.dir='{run}': another training is running in this folder (it holds {run / '.train.lock'});"
            " wait for it to end or give another hydra.run.dir"
        ]
        assert sorted(p.relative_to(run) for p in (run / "csv").rglob("*")) == logs_before  # no csv/version_1
        assert first.poll() is None  # the first one trains on
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock with the process
        first.wait()
    again = train(run, cache)  # lock free again: resumes (or starts) and trains to the end
    assert again.returncode == 0, again.stderr[-3000:]
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == STEPS


def test_concurrent_write_json_never_shows_a_reader_invalid_json(tmp_path: Path) -> None:
    """Four writers rewrite one file while a reader parses it: every read is one writer's whole document, and no
    temporary is left (each writer has its own temporary name in the destination folder)."""
    path, stop, seen = tmp_path / "metrics.json", threading.Event(), set()
    write_json({"writer": -1, "pad": "x" * 50_000}, path)

    def writer(index: int) -> None:
        for _ in range(100):
            write_json({"writer": index, "pad": "x" * 50_000}, path)

    def reader() -> None:
        while not stop.is_set():
            seen.add(json.loads(path.read_text())["writer"])

    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    watcher.join()
    assert seen <= {-1, 0, 1, 2, 3} and len(seen) > 1
    assert ckpt_files(tmp_path) == ["metrics.json"]
