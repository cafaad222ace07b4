"""Shared pytest fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig


@pytest.fixture(scope="session")
def skimage_photos() -> dict[str, np.ndarray]:
    """Real RGB photos (uint8, H x W x 3) bundled with scikit-image: independent test content."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee")}


# Two pytest-xdist workers share 2 cores: one thread each (and in the processes they start), since
# oversubscribed OpenMP pools spin-wait and run many times slower than single-threaded ones.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Caches (LR pyramids, npy stores, demo photos without paths.cache_dir) go to a throw-away folder, never ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="drn-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)  # one per test process

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
BENCHMARKS_DIR = REPO_ROOT.parent / "shared" / "data" / "benchmarks"

# Two DDP ranks on the CPU (gloo), as the README's CPU DDP command.
CPU_DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]

# The smallest run that still exercises every part of training: tiny DRN, tiny patches, two steps.
TINY_TRAIN = [
    "experiment=demo",
    "model=drn_tiny",
    "data.patch_size=32",
    "data.batch_size=2",
    "data.steps_per_epoch=2",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.max_steps=2",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "test_after_fit=false",
]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo-photo folder for the whole session, so each test does not rewrite the PNGs."""
    return tmp_path_factory.mktemp("drn_cache")


def compose_train(overrides: list[str], output_dir: Path, cache_dir: Path, demo: bool = True) -> DictConfig:
    """Compose conf/train.yaml as `python -m drn_lightning.train` would, with outputs under `output_dir`; the CPU demo
    (`experiment=demo`) unless `demo=False` or another experiment is named."""
    from hydra import compose, initialize_config_dir

    if demo and not any(o.startswith("experiment=") for o in overrides):
        overrides = ["experiment=demo", *overrides]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.output_dir={output_dir}", f"paths.cache_dir={cache_dir}", *overrides],
        )


def run_module(module: str, args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None):
    """Run `python -m module args` in a subprocess (the way users run it) and return the CompletedProcess."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def execute_notebook(path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, env: dict | None = None):
    """Run a notebook top to bottom in this interpreter (a private kernelspec found first) and return it."""
    import json

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec_dir = workdir / "jupyter" / "kernels" / "drn-test"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "drn-lightning test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(workdir / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, kernel_name="drn-test", timeout=600, resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return nb
