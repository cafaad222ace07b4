"""Issue 7: what happens when things go wrong (kills, preemption, NaN, hostile files, bad config, disk).

Fast tests work in-process; the ones that start `python -m drn_lightning.train` are marked slow
(`pytest -m "reliability and slow"`). Training subprocesses share one demo-photo cache and use a tiny
x2 DRN (4 features, 1 block), 16 px patches, batch 2, 3 steps per epoch, no validation.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import CPU_DDP, TINY_TRAIN, compose_train
from drn_lightning.data.io import ImageReadError, read_image
from drn_lightning.models.weights import CheckpointError
from drn_lightning.options import OptionError
from drn_lightning.train import prepare
from drn_lightning.train import train as fit
from drn_lightning.training.checkpoint_io import WRITTEN_LIST, AtomicCheckpointIO, CheckpointWriteError
from drn_lightning.training.run import SIGTERM_EXIT_CODE, failure_message

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CONF = REPO / "conf"
STEPS = 6  # two epochs of three steps

# A run small enough to train in seconds on a shared CPU, deterministic, checkpointing every 2 steps.
TINY = [
    "experiment=demo",
    "scale=2",
    "model.net.n_feats=4",
    "model.net.n_blocks=1",
    "data.patch_size=16",
    "data.batch_size=2",
    "data.steps_per_epoch=3",
    "data.num_workers=0",
    "data.persistent_workers=false",
    f"trainer.max_steps={STEPS}",
    "trainer.deterministic=true",
    "trainer.limit_val_batches=0",
    "optimized_metric=null",  # no validation, no val/psnr to return
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "test_after_fit=false",
    "~callbacks.image_grid",
    "~callbacks.progress_bar",
    "~callbacks.lr_monitor",
    "callbacks.model_checkpoint.monitor=null",
    "callbacks.model_checkpoint.filename='step{step}'",
    "callbacks.model_checkpoint.every_n_train_steps=2",
]


# ---------------------------------------------------------------------------------------------- helpers


def _env(cache: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "DRN_CACHE_DIR": str(cache),
        "PYTHONUNBUFFERED": "1",
        "HYDRA_FULL_ERROR": "0",
        "WANDB_MODE": "offline",
    }


def _train_cmd(run_dir: Path, overrides: list[str], tiny: bool = True) -> list[str]:
    return [
        sys.executable,
        "-m",
        "drn_lightning.train",
        *(TINY if tiny else []),
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def train(
    run_dir: Path, cache: Path, *overrides: str, tiny: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m drn_lightning.train` as a user runs it, with the tiny settings and outputs in `run_dir`."""
    return subprocess.run(
        _train_cmd(run_dir, list(overrides), tiny),
        cwd=REPO,
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def load(path: Path) -> dict[str, Any]:
    """A checkpoint read the way a resume reads it (AtomicCheckpointIO: weights_only=True)."""
    return AtomicCheckpointIO().load_checkpoint(path)


def assert_same_training_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bit-identical weights, optimiser moments and scheduler, at the same step."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), f"weights differ at {key}"
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][index][name])), name
    assert a["lr_schedulers"] == b["lr_schedulers"]


def newest_last(folder: Path) -> Path:
    """The file `ckpt_path=last` resolves to: the newest `last*.ckpt`."""
    return max(folder.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)


def ckpt_files(folder: Path) -> list[str]:
    """The folder's files but the record of the checkpoints written there (checkpoint_io.WRITTEN_LIST)."""
    return sorted(p.name for p in folder.iterdir() if p.name != WRITTEN_LIST) if folder.is_dir() else []


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo-photo cache for every training subprocess of this module."""
    return tmp_path_factory.mktemp("reliability_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> dict[str, Any]:
    """The uninterrupted run every interrupted one must match: STEPS steps, never stopped."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = train(run_dir, cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return load(run_dir / "checkpoints" / "last.ckpt")


def _checkpoint(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    state = {"state_dict": {"w": torch.arange(4.0)}, "global_step": 3, "pytorch-lightning_version": "2.6.6"}
    state.update(extra)
    return state


def _malicious_file(path: Path, marker: Path) -> Path:
    from helpers_reliability import Malicious

    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Malicious(str(marker))}, path)
    return path


# ---------------------------------------------------------------------------------------------- 1. kills


def test_crash_mid_write_keeps_the_previous_last_ckpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(tmp_path), last)
    before = last.read_bytes()
    real_save = torch.save

    def half_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(len(before) // 2)  # half a file on disk, then the "kill"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_checkpoint(tmp_path, global_step=4), last)
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert load(last)["global_step"] == 3
    assert ckpt_files(tmp_path) == ["last.ckpt"]  # no partial *.ckpt, no temporary left behind


@pytest.mark.slow
def test_sigkill_mid_write_leaves_only_a_hidden_temporary(tmp_path: Path) -> None:
    """A real SIGKILL while torch.save is writing: last.ckpt is untouched; the only debris is a hidden
    `.last.ckpt.*.tmp` that `ckpt_path=last` never picks up, removed by the next successful save."""
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(tmp_path), last)
    before = last.read_bytes()
    script = f"""
import os, signal, torch
from drn_lightning.training.checkpoint_io import AtomicCheckpointIO
real = torch.save
def die(obj, f, *a, **k):
    f.write(b"PK" + b"0" * 1000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = die
AtomicCheckpointIO().save_checkpoint({{"global_step": 4}}, {str(last)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert last.read_bytes() == before
    leftovers = [name for name in ckpt_files(tmp_path) if name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.") and leftovers[0].endswith(".tmp")
    io.save_checkpoint(_checkpoint(tmp_path, global_step=5), last)
    assert ckpt_files(tmp_path) == ["last.ckpt"] and load(last)["global_step"] == 5


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(
    tmp_path: Path, cache: Path, reference: dict[str, Any]
) -> None:
    run_dir = tmp_path / "run"
    killed = train(
        run_dir, cache, "+callbacks.killer._target_=helpers_reliability.KillAtStep", "+callbacks.killer.step=3"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = load(last)
    assert saved["global_step"] == 2  # saved every 2 steps; killed as step 4 began
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert progress["ready"] == 2 and saved["epoch"] == 0  # mid-epoch: 2 of 3 batches of epoch 0 drawn

    control = tmp_path / "control"  # same checkpoint without the loader's saved place: Lightning's plain behaviour
    (control / "checkpoints").mkdir(parents=True)
    without_place = load(last)
    del without_place["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    del without_place["SRDataModule"]
    AtomicCheckpointIO().save_checkpoint(without_place, control / "checkpoints" / "last.ckpt")

    resumed = train(run_dir, cache, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping the 2 batches of epoch 0" in resumed.stderr + resumed.stdout
    assert_same_training_state(load(last), reference)

    plain = train(control, cache, "ckpt_path=last")
    assert plain.returncode == 0, plain.stderr[-3000:]
    replayed = load(newest_last(control / "checkpoints"))
    assert replayed["global_step"] == STEPS
    assert any(not torch.equal(v, reference["state_dict"][k]) for k, v in replayed["state_dict"].items()), (
        "without the loader's place Lightning replays the epoch from its first batch, so the weights must differ"
    )


@pytest.mark.slow
def test_resume_with_workers_matches_the_uninterrupted_run_without(
    tmp_path: Path, cache: Path, reference: dict[str, Any]
) -> None:
    """Crops come from per-sample seeds: killed and resumed with 2 loader workers, the run still ends
    bit-identical to the uninterrupted `num_workers=0` reference."""
    with_workers = [o for o in TINY if not o.startswith("data.num_workers=")] + ["data.num_workers=2"]
    run_dir = tmp_path / "run"
    killer = ["+callbacks.killer._target_=helpers_reliability.KillAtStep", "+callbacks.killer.step=3"]
    killed = train(run_dir, cache, *with_workers, *killer, tiny=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2
    resumed = train(run_dir, cache, *with_workers, "ckpt_path=last", tiny=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping the 2 batches of epoch 0" in resumed.stderr + resumed.stdout
    assert_same_training_state(load(run_dir / "checkpoints" / "last.ckpt"), reference)


@pytest.mark.slow
def test_kill_in_a_later_epoch_with_the_default_workers_resumes_exactly(
    tmp_path: Path, cache: Path, reference: dict[str, Any]
) -> None:
    """Killed in epoch 1 with the default loader settings (persistent workers), resumed from the step-4 checkpoint
    (1 of epoch 1's 3 batches done): bit-identical to the uninterrupted run. (Lightning builds the train loader for
    `estimated_stepping_batches` before it restores the loops; the DataModule's own state covers that.)"""
    defaults = [o for o in TINY if not o.startswith(("data.num_workers=", "data.persistent_workers="))]
    run_dir = tmp_path / "run"
    killer = ["+callbacks.killer._target_=helpers_reliability.KillAtStep", "+callbacks.killer.step=5"]
    killed = train(run_dir, cache, *defaults, *killer, tiny=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    saved = load(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 4 and saved["epoch"] == 1
    resumed = train(run_dir, cache, *defaults, "ckpt_path=last", tiny=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping the 1 batches of epoch 1" in resumed.stderr + resumed.stdout
    assert_same_training_state(load(run_dir / "checkpoints" / "last.ckpt"), reference)


def _live_in_group(pgid: int) -> list[int]:
    """Processes of process group `pgid` still alive (zombies waiting to be reaped do not count)."""
    alive = []
    for proc_stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = proc_stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # ended while we looked
            continue
        if int(group) == pgid and state != "Z":
            alive.append(int(proc_stat.parent.name))
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc")
def test_two_rank_ddp_killed_mid_epoch_resumes_exactly_with_the_same_command(tmp_path: Path, cache: Path) -> None:
    """Two CPU DDP ranks, both SIGKILLed (the whole process group, as a scheduler does) as step 4 begins, after the
    step-2 checkpoint: no rank survives, and the same command (ckpt_path=auto) ends with the weights, optimiser and
    scheduler of an uninterrupted 2-rank run, each rank skipping the batches of its own shard it had drawn."""
    uninterrupted = train(tmp_path / "reference", cache, *CPU_DDP)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert "Starting with 2 processes" in uninterrupted.stdout + uninterrupted.stderr
    run_dir = tmp_path / "run"
    killer = ["+callbacks.killer._target_=helpers_reliability.KillAtStep", "+callbacks.killer.step=3"]
    proc = subprocess.Popen(
        _train_cmd(run_dir, [*CPU_DDP, *killer, "+callbacks.killer.group=true"]),
        cwd=REPO, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    deadline = time.monotonic() + 10  # the orphaned rank is reaped by init shortly after it is killed
    while _live_in_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_in_group(proc.pid) == []
    assert load(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2
    resumed = train(run_dir, cache, *CPU_DDP)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for rank_log in ("train.log", "train_ddp_process_1.log"):  # each rank's Hydra job log (rank 1's named by Lightning)
        assert "skipping the 2 batches of epoch 0" in (run_dir / rank_log).read_text(), rank_log
    assert_same_training_state(
        load(run_dir / "checkpoints" / "last.ckpt"), load(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR1", "SIGUSR2"]
)
def test_preemption_signal_saves_a_checkpoint_at_the_current_step_and_the_same_command_resumes(
    tmp_path: Path, cache: Path, reference: dict[str, Any], signum: signal.Signals
) -> None:
    """SIGTERM (SLURM preemption), SIGUSR1 (SLURM's warning signal; outside SLURM it used to kill the run unsaved) or
    SIGUSR2 (submitit, before a time limit): last.ckpt at the step reached, exit 143; the SIGUSR1/SIGUSR2 runs are
    then resumed by the very same command (the default ckpt_path=auto), as a requeued job."""
    run_dir, marker = tmp_path / "run", tmp_path / "step"
    proc = subprocess.Popen(
        _train_cmd(
            run_dir,
            [
                "+callbacks.marker._target_=helpers_reliability.StepMarker",
                f"+callbacks.marker.path={marker}",
                "+callbacks.marker.delay=2.0",
            ],
        ),
        cwd=REPO,
        env=_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (marker.is_file() and marker.read_text().strip()):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training never reached its first step"
            time.sleep(0.1)
        proc.send_signal(signum)  # while step 1's on_train_batch_end sleeps
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = int(marker.read_text())
    assert 1 <= step < STEPS
    assert proc.returncode == SIGTERM_EXIT_CODE, stderr[-3000:]
    assert (
        f"{signum.name}: saved checkpoint at global step {step} to {run_dir / 'checkpoints' / 'last.ckpt'}"
        in stdout + stderr
    )
    line = f"error: stopped by {signum.name} (preemption); resume with ckpt_path=last hydra.run.dir={run_dir}"
    assert error_lines(stderr) == [line]  # SIGUSR1/SIGUSR2 said SIGTERM before
    assert f"[drn_lightning.training.run][ERROR] - {line}" in (run_dir / "train.log").read_text()
    saved = load(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == step

    resumed = train(run_dir, cache, *(["ckpt_path=last"] if signum == signal.SIGTERM else []))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "last.ckpt" in ckpt_files(run_dir / "checkpoints") and "last-v1.ckpt" not in ckpt_files(
        run_dir / "checkpoints"
    )
    assert_same_training_state(load(run_dir / "checkpoints" / "last.ckpt"), reference)


# ---------------------------------------------------------------------------------------------- 2. NaN / Inf


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_step_and_files_and_keeps_last_good_checkpoint(tmp_path: Path, cache: Path) -> None:
    run_dir = tmp_path / "run"
    result = train(
        run_dir, cache, "+callbacks.poison._target_=helpers_reliability.PoisonBatchAtStep", "+callbacks.poison.step=3"
    )
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "non-finite loss (nan) at global step 3" in line
    demo_files = {"astronaut.png", "rocket.png", "hubble_deep_field.png", "immunohistochemistry.png", "retina.png"}
    named = set(line.split("batch files: ")[1].strip("[]").replace("'", "").split(", "))
    assert len(named) == 2 and named <= demo_files
    assert ckpt_files(run_dir / "checkpoints") == ["last.ckpt", "step2.ckpt"]
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


@pytest.mark.slow
def test_nonfinite_loss_skip_logs_and_continues(tmp_path: Path, cache: Path) -> None:
    run_dir = tmp_path / "run"
    result = train(
        run_dir,
        cache,
        "nonfinite_loss=skip",
        "+callbacks.poison._target_=helpers_reliability.PoisonBatchAtStep",
        "+callbacks.poison.step=3",
        "+callbacks.poison.value=inf",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "skipping batch: non-finite loss (inf) at global step 3, batch files: [" in output
    assert output.count("skipping batch") == 1
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == STEPS
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


# ---------------------------------------------------------------------------------------------- 3. hostile files


@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
def test_malicious_checkpoint_is_refused_without_running_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    marker = tmp_path / "pwned"
    path = _malicious_file(tmp_path / "evil.ckpt", marker)
    # Even when the environment asks torch for unsafe loads by default, ours stays weights_only=True.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused: .*nothing was executed"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()
    # The file really is hostile: Lightning's stock loader under that setting runs it.
    TorchCheckpointIO().load_checkpoint(path)
    assert marker.exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("empty", "file is empty"), ("truncated", "not a readable PyTorch file"), ("text", "not a readable PyTorch file")],
)
def test_broken_checkpoint_gives_an_error_naming_the_file(tmp_path: Path, damage: str, reason: str) -> None:
    path = tmp_path / "broken.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(tmp_path), path)
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "text": b"not a checkpoint\n"}[damage])
    with pytest.raises(CheckpointError, match=rf"broken\.ckpt: {reason}"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_checkpoints_hold_only_plain_containers(tmp_path: Path) -> None:
    """Hydra configs reach the checkpoint as DictConfig (datamodule hparams); stored plain, they load safely."""
    from pytorch_lightning.utilities.parsing import AttributeDict

    hparams = AttributeDict(
        train=OmegaConf.create({"hr_dir": "/data", "augment": True}), val_sets=OmegaConf.create([{"demo": True}])
    )
    path = tmp_path / "c.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(tmp_path, datamodule_hyper_parameters=hparams), path)
    loaded = load(path)
    assert loaded["datamodule_hyper_parameters"] == {
        "train": {"hr_dir": "/data", "augment": True},
        "val_sets": [{"demo": True}],
    }
    assert type(loaded["datamodule_hyper_parameters"]["train"]) is dict
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def _png(path: Path, size: int = 64) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("kind", ["zero_byte", "truncated_png", "not_an_image", "decompression_bomb"])
def test_broken_image_gives_an_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.png"
    if kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "truncated_png":
        data = _png(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_an_image":
        path.write_text("<html>this is not a png</html>\n")
    else:  # a 57-byte PNG whose header claims 30000 x 30000 pixels (900 Mpx, 2.7 GB decoded)
        path.write_bytes(_bomb_png(30000, 30000))
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    if kind == "decompression_bomb":
        assert "decompression bomb" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zero_byte", "not_an_image", "decompression_bomb", "truncated_png"])
def test_broken_training_image_stops_the_run_naming_the_file(tmp_path: Path, cache: Path, kind: str) -> None:
    """A bad file among the training images: most fail when the dataset reads headers at start, a
    truncated PNG when its pixels are first decoded mid-epoch; either way one error line names it."""
    hr = tmp_path / "hr"
    hr.mkdir()
    for name in ("a", "b"):
        _png(hr / f"{name}.png")
    bad = hr / "c.png"
    if kind == "zero_byte":
        bad.write_bytes(b"")
    elif kind == "not_an_image":
        bad.write_text("<html>this is not a png</html>\n")
    elif kind == "decompression_bomb":
        bad.write_bytes(_bomb_png(30000, 30000))
    else:
        data = _png(bad).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    data_overrides = [
        "data=df2k",
        f"data.train.hr_dir={hr}",
        "data.train.lr_dir=null",
        f"data.train.cache_dir={tmp_path / 'lr_cache'}",
        "data.val_sets.DIV2K_val=null",
        "data.val_sets.Set5=null",
    ]
    result = train(tmp_path / "run", cache, *TINY, *data_overrides, tiny=False)
    assert result.returncode == 1, result.stderr[-3000:]
    (line,) = error_lines(result.stderr)
    assert str(bad) in line


@pytest.mark.slow
def test_malicious_resume_checkpoint_is_refused_at_start(tmp_path: Path, cache: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _malicious_file(tmp_path / "evil.ckpt", marker)
    run_dir = tmp_path / "run"
    result = train(run_dir, cache, f"ckpt_path={evil}")  # refused when Lightning loads it, before any step
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: {evil}: refused") and "nothing was executed" in line
    assert not marker.exists() and not (run_dir / "checkpoints").exists()

    # `ckpt_path=last` picks the file up only when training starts: refused there, by the checkpoint loader.
    (run_dir / "checkpoints").mkdir(parents=True)
    planted = _malicious_file(run_dir / "checkpoints" / "last.ckpt", marker)
    result = train(run_dir, cache, "ckpt_path=last")
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"error: {planted}: refused") and "nothing was executed" in line
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- 4. configuration

INVALID = [
    (["scale=3"], "scale=3: allowed: 2, 4, 8"),
    (["data=semi", "data.unpaired_ratio=1.0"], "data.unpaired_ratio=1.0: must be in [0, 1)"),
    (["data.patch_size=30"], "data.patch_size=30: must be a positive multiple of scale=4"),
    (
        ["data=df2k", "paths.data_dir=/nonexistent"],
        "data.train.hr_dir='/nonexistent/DF2K/DF2K_train_HR': does not exist",
    ),
    (["model.optimizer.lr=-0.001"], "model.optimizer.lr=-0.001: must be > 0"),
    (["model=drn_s", "scale=2"], "model.net.variant='drn_s': not defined at scale=2"),
    (["nonfinite_loss=ignore"], "nonfinite_loss='ignore': allowed: raise, skip"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path='/nonexistent/last.ckpt': file not found"),
]


def _compose(overrides: list[str], tmp_path: Path) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "experiment=demo",
                *overrides,
            ],
        )


@pytest.mark.parametrize(("overrides", "message"), INVALID)
def test_invalid_option_is_rejected_before_any_data_is_read(tmp_path: Path, overrides: list[str], message: str) -> None:
    import drn_lightning.train as entry

    cfg = _compose(overrides, tmp_path)
    with pytest.raises(OptionError) as info:
        entry.prepare(cfg)
    assert message in str(info.value)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # no photo, LR cache or log written


def test_unwritable_checkpoint_folder_is_rejected_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = _compose([f"callbacks.model_checkpoint.dirpath={blocker}/checkpoints"], tmp_path)
    with pytest.raises(
        OptionError,
        match=rf"callbacks\.model_checkpoint\.dirpath='{blocker}/checkpoints': cannot write there: {blocker} is a file",
    ):
        prepare(cfg)


def test_hostile_weights_file_is_rejected_at_start(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _malicious_file(tmp_path / "evil.pt", marker)
    cfg = _compose([f"weights={evil}"], tmp_path)
    with pytest.raises(CheckpointError, match=rf"{evil}: refused"):
        prepare(cfg)
    assert not marker.exists() and not (tmp_path / "cache").exists()  # before any data is read


def test_unknown_key_is_rejected_and_plus_adds_it(tmp_path: Path) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not override 'foo'.*\+foo=1"):
        _compose(["foo=1"], tmp_path)
    assert _compose(["+foo=1"], tmp_path).foo == 1


@pytest.mark.slow
def test_entry_point_rejects_invalid_options_with_one_error_line_and_builds_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # Every INVALID message is checked in process above; here the entry point's one line and exit 2 for one option of
    # each layer that checks: a constructor (scale), a dataset folder, the resume file.
    cases = [
        INVALID[0],
        INVALID[3],
        INVALID[-1],
        ([f"callbacks.model_checkpoint.dirpath={blocker}/ckpt"], "callbacks.model_checkpoint.dirpath="),
        (["foo=1"], None),  # Hydra's own message (no `error:` line): "Could not override 'foo'"
        ([f"hydra.run.dir={blocker}/run"], None),  # Hydra cannot create the run folder
    ]

    def run(index: int) -> subprocess.CompletedProcess[str]:
        overrides = cases[index][0]
        run_dir = tmp_path / f"run{index}"
        own_dir = [] if any(o.startswith("hydra.run.dir=") for o in overrides) else [f"hydra.run.dir={run_dir}"]
        cmd = [sys.executable, "-m", "drn_lightning.train", "experiment=demo", *own_dir, *overrides]
        return subprocess.run(
            cmd, cwd=REPO, env=_env(tmp_path / f"cache{index}"), capture_output=True, text=True, timeout=300
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, range(len(cases))))
    for index, ((overrides, message), result) in enumerate(zip(cases, results, strict=True)):
        context = f"{overrides}: rc={result.returncode}\n{result.stderr[-2000:]}"
        assert result.returncode != 0, context
        if message is not None:
            assert result.returncode == 2, context
            (line,) = error_lines(result.stderr)
            assert message in line, context
        elif overrides == ["foo=1"]:
            assert "Could not override 'foo'" in result.stderr and "+foo=1" in result.stderr, context
        else:
            assert f"{blocker}/run" in result.stderr and "Not a directory" in result.stderr, context
        assert not (tmp_path / f"cache{index}").exists(), context  # no demo photos / LR cache written
        assert not (tmp_path / f"run{index}" / "checkpoints").exists(), context
        assert not (tmp_path / f"run{index}" / "csv").exists(), context


# ---------------------------------------------------------------------------------------------- 5. disk


def test_full_disk_at_save_gives_a_clear_error_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(tmp_path), last)
    before = last.read_bytes()

    def disk_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04" + b"\0" * 4096)  # some bytes made it, then the device filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError) as info:
        io.save_checkpoint(_checkpoint(tmp_path, global_step=4), last)
    message = str(info.value)
    assert str(last) in message and "No space left on device" in message and "MiB free" in message
    assert "previous file at that path is kept" in message
    assert info.value.errno == errno.ENOSPC
    assert failure_message(info.value) == (message, 1)  # what the entry point prints after `error: `
    monkeypatch.undo()
    assert ckpt_files(tmp_path) == ["last.ckpt"] and last.read_bytes() == before

    new = tmp_path / "step4.ckpt"  # a first save that fails leaves nothing at all
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match="no file was written"):
        io.save_checkpoint(_checkpoint(tmp_path), new)
    assert ckpt_files(tmp_path) == ["last.ckpt"]


# ---------------------------------------------------------------------------------------------- 8. silent corruption


def _flip_tensor_bytes(path: Path, count: int = 64) -> None:
    """XOR `count` bytes in the middle of the largest tensor record of a torch zip file (stored uncompressed);
    torch.load checks no CRC, so without a digest the file would still load."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[record.header_offset + 26 : record.header_offset + 30])
    start = record.header_offset + 30 + name_len + extra_len + (record.file_size - count) // 2
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_training_checkpoint_are_refused_naming_the_file(tmp_path: Path) -> None:
    """AtomicCheckpointIO (every training checkpoint) stores a SHA-256 of the tensors and checks it on load."""
    weights = {"primal.w": torch.randn(64, 64), "primal.b": torch.zeros(64)}
    moments = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(64, 64)}}, "param_groups": []}
    state = _checkpoint(tmp_path, state_dict=weights, optimizer_states=[moments])
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(state, path)
    loaded = load(path)
    assert set(loaded) == set(state)  # the digest is checked and dropped, not handed to Lightning
    assert torch.equal(loaded["state_dict"]["primal.w"], weights["primal.w"])
    _flip_tensor_bytes(path)
    assert not torch.equal(torch.load(path, weights_only=True)["state_dict"]["primal.w"], weights["primal.w"])
    with pytest.raises(CheckpointError, match=r"last\.ckpt: corrupt: its tensors do not match the SHA-256 digest"):
        load(path)


@pytest.mark.parametrize("damaged", ["primal.pt", "dual.pt", "weights.ckpt"])
def test_flipped_bytes_in_weights_files_are_refused_naming_the_file(tmp_path: Path, damaged: str) -> None:
    """`drn-sr convert` / `save_official` (the authors' pair) and `official_to_checkpoint` (.ckpt) files."""
    from drn_lightning.models import build_drn, load_weights, official_to_checkpoint, save_official

    torch.manual_seed(0)
    primal, duals = build_drn("drn_tiny", 4)
    save_official(primal, duals, tmp_path / "primal.pt", tmp_path / "dual.pt")
    info = {"variant": "drn_tiny", "scale": 4, "n_feats": 8, "n_blocks": 4}
    official_to_checkpoint(primal, duals, info, tmp_path / "weights.ckpt")
    for name in ("primal.pt", "weights.ckpt"):
        load_weights(tmp_path / name, tmp_path / "dual.pt" if name == "primal.pt" else None)  # undamaged: loads
    _flip_tensor_bytes(tmp_path / damaged)
    first, dual = (tmp_path / "weights.ckpt", None) if damaged == "weights.ckpt" else (tmp_path / "primal.pt", "dual")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / damaged}: corrupt")):
        load_weights(first, tmp_path / "dual.pt" if dual else None)


def test_authors_files_load_without_a_digest_and_ours_add_no_key(tmp_path: Path) -> None:
    """The authors' released `.pt` (a plain state dict) has no digest and loads; ours keep the digest in the state
    dict's `_metadata`, so the authors' `load_state_dict(strict=True)` sees exactly the model's keys."""
    from drn_lightning.models import build_drn, load_weights, save_official
    from drn_lightning.models.drn import DRN
    from drn_lightning.models.weights import DIGEST_KEY

    torch.manual_seed(0)
    primal, _ = build_drn("drn_tiny", 4, dual=False)
    torch.save(primal.state_dict(), tmp_path / "authors.pt")  # what the authors' code writes
    loaded, _, info = load_weights(tmp_path / "authors.pt")
    assert info["variant"] == "drn_tiny" and torch.equal(loaded.head.weight, primal.head.weight)
    save_official(primal, None, tmp_path / "ours.pt")
    state = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert list(state) == list(primal.state_dict()) and DIGEST_KEY in state._metadata
    DRN(scale=4, n_feats=8, n_blocks=4).load_state_dict(state, strict=True)  # the authors' loader


def test_non_finite_weights_are_refused_by_eval(tmp_path: Path) -> None:
    from conftest import REPO_ROOT, run_module
    from drn_lightning.models import build_drn, save_official

    primal, _ = build_drn("drn_tiny", 4, dual=False)
    with torch.no_grad():
        primal.head.bias[0] = float("nan")
    save_official(primal, None, tmp_path / "nan.pt")
    (tmp_path / "bench" / "Photos").mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "bench" / "Photos" / "grey.png")
    result = run_module(
        "drn_lightning.eval",
        [
            "model=drn_tiny",
            "scale=4",
            f"weights={tmp_path / 'nan.pt'}",
            f"data.root={tmp_path / 'bench'}",
            "data.sets=[Photos]",
            f"results_json={tmp_path / 'out.json'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert error_lines(result.stderr) == [
        f"error: {tmp_path / 'nan.pt'}: non-finite weights (NaN or Inf) in ['head.bias']; the weights are unusable"
    ]
    assert "Traceback" not in result.stderr and not (tmp_path / "out.json").exists()


def _without_digest(path: Path, kind: str) -> None:
    """The file re-saved without its digest: the top-level key of a `.ckpt` (and, for `both`, our top-level mark),
    or the `_metadata` entry of a `.pt` state dict (the first, for the authors' list of dual state dicts)."""
    from drn_lightning.models.weights import DIGEST_KEY, WRITER_KEY

    obj = torch.load(path, weights_only=True)
    if path.suffix == ".ckpt":
        for key in (DIGEST_KEY, WRITER_KEY) if kind == "both" else (DIGEST_KEY,):
            del obj[key]
    for state in obj if isinstance(obj, list) else [obj]:
        getattr(state, "_metadata", {}).pop(DIGEST_KEY, None)
    torch.save(obj, path)


@pytest.mark.parametrize(
    ("name", "stripped"),
    [
        ("last.ckpt", "digest"),
        ("last.ckpt", "both"),
        ("weights.ckpt", "digest"),
        ("primal.pt", "digest"),
        ("dual.pt", "digest"),
    ],
)
def test_our_files_without_their_digest_are_refused_unless_allow_unverified(
    tmp_path: Path, name: str, stripped: str
) -> None:
    """Before, a file whose digest was removed loaded unchecked. Our writers also mark the state dict's `_metadata`,
    so removing the digest and the top-level mark still leaves it recognisably ours."""
    from drn_lightning.models import build_drn, load_weights, official_to_checkpoint, save_official

    torch.manual_seed(0)
    primal, duals = build_drn("drn_tiny", 4)
    save_official(primal, duals, tmp_path / "primal.pt", tmp_path / "dual.pt")
    official_to_checkpoint(primal, duals, {"variant": "drn_tiny", "scale": 4, "n_feats": 8, "n_blocks": 4},
                           tmp_path / "weights.ckpt")  # fmt: skip
    state = {"state_dict": primal.state_dict(), "global_step": 3, "pytorch-lightning_version": "2.6.6"}
    AtomicCheckpointIO().save_checkpoint(state, tmp_path / "last.ckpt")
    _without_digest(tmp_path / name, stripped)

    def read(allow_unverified: bool) -> Any:
        if name == "last.ckpt":
            return AtomicCheckpointIO(allow_unverified=allow_unverified).load_checkpoint(tmp_path / name)
        first, dual = ("primal.pt", tmp_path / "dual.pt") if name.endswith(".pt") else (name, None)
        return load_weights(tmp_path / first, dual, allow_unverified=allow_unverified)

    with pytest.raises(
        CheckpointError, match=re.escape(f"{tmp_path / name}: written by drn_lightning but its SHA-256")
    ):
        read(False)
    read(True)


IN_PROCESS = [*TINY_TRAIN, "scale=2", "model.net.n_feats=4", "model.net.n_blocks=1", "data.patch_size=16"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, demo_cache: Path) -> Path:
    """One training step of the tiny x2 DRN (4 features, 1 block), in this process; its last.ckpt."""
    folder = tmp_path_factory.mktemp("tiny")
    cfg = compose_train([*IN_PROCESS, "trainer.max_steps=1", "~callbacks.image_grid"], folder, demo_cache)
    fit(cfg, *prepare(cfg))
    return folder / "checkpoints" / "last.ckpt"


NETWORKS = {  # config overrides against the x2 (4 features, 1 block) checkpoint: (overrides, the config's side)
    "scale": (["scale=4"], "custom_f4_b1 x4 (n_feats=4, n_blocks=1)"),
    "width": (["model.net.n_feats=8"], "custom_f8_b1 x2 (n_feats=8, n_blocks=1)"),
    "variant": (["model.net.n_feats=null", "model.net.n_blocks=null"], "drn_tiny x2 (n_feats=8, n_blocks=4)"),
}


@pytest.mark.parametrize("option", ["ckpt_path", "weights"])
@pytest.mark.parametrize("differs", list(NETWORKS))
def test_a_checkpoint_of_another_network_is_one_line_naming_both(
    tmp_path: Path, demo_cache: Path, tiny_checkpoint: Path, option: str, differs: str
) -> None:
    """Resuming or starting from a checkpoint of another scale, width or variant. Before: Lightning's strict load
    listed every mismatched tensor (35-112 lines), or `weights=` said `expected scale x4` without the config's side."""
    source, (overrides, config_side) = tiny_checkpoint, NETWORKS[differs]
    cfg = compose_train([*IN_PROCESS, *overrides, f"{option}={source}"], tmp_path / "run", demo_cache)
    with pytest.raises(OptionError) as info:
        fit(cfg, *prepare(cfg))
    assert str(info.value) == (
        f"{option}={str(source)!r}: checkpoint: custom_f4_b1 x2 (n_feats=4, n_blocks=1); config: {config_side}"
    )
    assert info.value.exit_code == 2 and not (tmp_path / "run" / "checkpoints").exists()


def test_an_error_line_is_also_written_to_the_run_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """run_guard prints the one `error:` line and writes it to the run's log file (Hydra's `<run>/train.log`)."""
    import logging

    from omegaconf import OmegaConf

    from drn_lightning.training.run import run_guard

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "extras": {"print_config": False}})
    handler = logging.FileHandler(tmp_path / "train.log")
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as stop, run_guard(cfg):
            raise OptionError("data.patch_size", 30, "must be a positive multiple of scale=4")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    line = "error: data.patch_size=30: must be a positive multiple of scale=4"
    assert stop.value.code == 2 and capsys.readouterr().err.splitlines() == [line]
    assert (tmp_path / "train.log").read_text().splitlines() == [f"[drn_lightning.training.run][ERROR] - {line}"]
