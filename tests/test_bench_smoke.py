"""`make bench` plumbing: the benchmark's --quick mode runs every case and writes a complete bench.json.

No timing assertions: the quick sizes are too small to mean anything about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HEADLINE_NUMBERS = (
    "train_speedup_vs_reference",
    "infer_speedup_vs_reference",
    "tiled_peak_rss_mb",
    "whole_peak_rss_mb",
    "data_to_model_ratio",
    "train_fraction_of_peak",
    "conv_peak_gflops",
    "matmul_peak_gflops",
)


def test_quick_bench_writes_complete_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    failures = [entry for entry in report["case_log"] if "error" in entry]
    assert not failures, failures

    assert isinstance(report["device"], str) and report["device"]
    for key in HEADLINE_NUMBERS:
        assert isinstance(report[key], float) and report[key] > 0, (key, report[key])
    assert report["numerics_ok"] is True
    assert set(report["targets_met"]) == set(report["targets"])

    (name, variant), = report["variants"].items()
    assert name == "drn_tiny_x4"
    for case in ("train_ref", "train_ours"):
        assert variant[case]["step_s"] > 0 and variant[case]["samples_per_s"] > 0
        assert len(variant[case]["losses"]) == 2
    assert variant["train_ours"]["channels_last"] is True
    assert variant["numerics"]["ok"] is True
    assert variant["step_gflop"] > 0 and variant["infer_max_abs_diff"] < 1e-2
    for mode in ("whole", "tiled"):
        assert report["upscale"][mode]["peak_rss_mb"] > 0 and report["upscale"][mode]["seconds"] > 0
    assert report["upscale"]["tiled"]["tile"] is not None and report["upscale"]["whole"]["tile"] is None
    assert report["data"]["samples_per_s"] > 0

    assert "Targets" in proc.stdout and str(out.resolve()) in proc.stdout
