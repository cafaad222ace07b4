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
    "train_mixed_speedup_vs_reference",
    "conv_peak_gflops",
    "matmul_peak_gflops",
)


def test_quick_bench_writes_complete_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
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

    ((name, variant),) = report["variants"].items()
    assert name == "drn_tiny_x4"
    for case in ("train_ref", "train_ours"):
        assert variant[case]["step_s"] > 0 and variant[case]["samples_per_s"] > 0
        assert len(variant[case]["losses"]) == 2
    assert variant["train_ours"]["channels_last"] is True
    # --quick forces the bf16 mixed-precision case (auto runs it only where bf16 is fast: CUDA, AMX CPUs).
    assert report["mixed_precision"]["overrides"][0] == "trainer.precision=bf16-mixed"
    assert variant["train_mixed"]["step_s"] > 0 and len(variant["train_mixed"]["losses"]) == 2
    assert variant["mixed_numerics"]["ok"] is True and report["mixed_numerics_ok"] is True
    assert variant["mixed_numerics"]["rel_diff"][0] > 0  # bf16 really ran: not the fp32 losses again
    assert report["targets_met"]["train_mixed_speedup_vs_reference"] is None  # the 2.5x target is for CUDA
    assert variant["infer_ours_bf16"]["precision"] == "bf16" and variant["infer_bf16_max_abs_diff"] < 8.0
    assert variant["numerics"]["ok"] is True
    assert variant["step_gflop"] > 0 and variant["infer_max_abs_diff"] < 1e-2
    for mode in ("whole", "tiled"):
        assert report["upscale"][mode]["peak_rss_mb"] > 0 and report["upscale"][mode]["seconds"] > 0
    assert report["upscale"]["tiled"]["tile"] is not None and report["upscale"]["whole"]["tile"] is None
    assert report["data"]["samples_per_s"] > 0

    assert "Targets" in proc.stdout and str(out.resolve()) in proc.stdout


def test_mixed_precision_recipe_per_device(monkeypatch) -> None:
    """bf16 where it is fast: CUDA with torch.compile, CPUs with AMX; none on other CPUs (bf16 is slower there)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("drn_bench_recipe", REPO / "benchmarks" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.mixed_precision_overrides("cuda") == ["trainer.precision=bf16-mixed", "compile=true"]
    monkeypatch.setattr(bench, "cpu_has_amx_bf16", lambda: False)
    assert bench.mixed_precision_overrides("cpu") is None
    monkeypatch.setattr(bench, "cpu_has_amx_bf16", lambda: True)
    assert bench.mixed_precision_overrides("cpu") == ["trainer.precision=bf16-mixed"]
