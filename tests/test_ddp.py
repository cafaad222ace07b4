"""DDP inside a Hydra multirun: one sweep folder, every job trained by its own N ranks (issue 13, point 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CPU_DDP, REPO_ROOT, TINY_TRAIN

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_multirun_with_ddp_runs_each_job_on_two_ranks_in_one_sweep_folder(tmp_path: Path, demo_cache: Path) -> None:
    """`-m trainer=ddp trainer.devices=2 data.unpaired_ratio=0,0.5`: the child ranks must train their job, not re-run
    the sweep (which printed "Launching 2 jobs" twice and left a second multirun folder)."""
    log_dir = tmp_path / "logs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drn_lightning.train",
            "-m",
            "data=semi",
            "data.unpaired_ratio=0,0.5",
            *[o for o in TINY_TRAIN if o != "test_after_fit=false"],
            *CPU_DDP,
            "logger=csv",
            "eval_extra_sets=[]",
            f"paths.cache_dir={demo_cache}",
            "+callbacks.rank_marker._target_=helpers_reliability.RankMarker",
        ],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "DRN_LOG_DIR": str(log_dir),
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # on a timeout every rank goes, not only the launching one
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("Launching 2 jobs") == 1
    (sweep_dir,) = (log_dir / "train" / "multiruns").iterdir()  # exactly one multirun folder
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    assert (stdout + stderr).count("All distributed processes registered. Starting with 2 processes") == 2
    child_ranks = set()
    for job, ratio in (("0", 0.0), ("1", 0.5)):
        ranks = [json.loads((sweep_dir / job / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert [(r["world_size"], r["global_step"], r["unpaired_ratio"]) for r in ranks] == [(2, 2, ratio)] * 2
        assert ranks[0]["pid"] != ranks[1]["pid"]  # two processes trained this job
        child_ranks.add(ranks[1]["pid"])
        evaluation = json.loads((sweep_dir / job / "eval.json").read_text())  # the final evaluation, once per job
        assert {"demo_nearest", "demo_bicubic"} <= set(evaluation)
    assert len(child_ranks) == 2  # each job started a rank of its own
    assert stdout.count("run directory:") == 2
