"""Process settings of the entry points: glibc memory reuse (page faults per step) and the config switch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drn_lightning.training.runtime import _glibc

# Allocate and free a 64 MB tensor 20 times, counting the page faults of the last 10 rounds.
PROBE = """
import json, resource, sys, torch
from drn_lightning.training.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def churn():
    x = torch.empty(16 * 2**20)  # 64 MB: above glibc's largest mmap threshold
    x.fill_(1.0)                 # touch every page
    return float(x[-1])
for _ in range(10):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    churn()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt is not available here")


def _probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_glibc
@pytest.mark.slow
def test_keep_freed_memory_stops_refaulting_big_blocks() -> None:
    default, kept = _probe("default"), _probe("keep")
    pages = 10 * 64 * 2**20 // 4096  # what 10 fresh 64 MB blocks cost in 4 KiB pages
    assert kept["kept"] is True
    assert default["faults"] > 0.9 * pages  # by default every block comes back as fresh pages from the kernel
    assert kept["faults"] < 0.01 * pages  # kept: the freed block is reused, no new faults


def test_train_config_switch_is_validated(tmp_path: Path) -> None:
    from conftest import compose_train
    from drn_lightning.options import OptionError
    from drn_lightning.train import prepare

    cfg = compose_train(["keep_freed_memory=maybe"], tmp_path / "out", tmp_path / "cache")
    with pytest.raises(OptionError, match="keep_freed_memory=.maybe.: must be true or false"):
        prepare(cfg)
    assert compose_train([], tmp_path / "out", tmp_path / "cache").keep_freed_memory is True
