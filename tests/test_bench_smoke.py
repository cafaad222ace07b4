"""`make bench` plumbing: the benchmark's --quick mode runs every case and writes a complete bench.json.

No timing assertions: the quick sizes are too small to mean anything about speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

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
TOP_LEVEL = {
    "device", "device_type", "torch", "threads", "quick", "settings", "variants", "targets", "mixed_precision",
    "peak", "upscale", "tiled_2048", "data", "data_recipe", "data_2k", "case_log", "headline_variant",
    "train_speedup_vs_reference", "train_fraction_of_peak", "train_mixed_speedup_vs_reference",
    "infer_speedup_vs_reference", "numerics_ok", "mixed_numerics_ok", "whole_peak_rss_mb", "tiled_peak_rss_mb",
    "tiled_rss_fraction_of_whole", "whole_seconds", "tiled_2048_peak_rss_mb", "tiled_seconds", "data_samples_per_s",
    "model_train_samples_per_s", "data_to_model_ratio", "conv_peak_gflops", "matmul_peak_gflops", "total_wall_s",
    "max_load_avg_1min", "targets_met",
}  # fmt: skip
CASE = {"case_wall_s", "load_avg_1min"}  # every case's result
STEP = {"step_s", "step_s_median", "step_s_all", "warmup_s", "samples_per_s", "timed_steps", "warmup_steps", "losses",
        "peak_rss_mb", "threads", "rounds"} | CASE  # fmt: skip
KEYS = {  # per section: what its JSON object holds at least
    "peak": {"matmul_n", "matmul_gflops", "conv_shape", "conv_gflops", "conv_fwd_bwd_gflops", "threads",
             "conv_channels_last_gflops", "conv_contiguous_gflops", "conv_channels_last_fwd_bwd_gflops",
             "conv_contiguous_fwd_bwd_gflops"} | CASE,
    "train_ref": STEP | {"adam", "fwd_flops", "bwd_flops", "step_flops"},
    "train_ours": STEP | {"channels_last", "optimizer", "optimizer_fused", "optimizer_foreach", "compile", "overrides"},
    "infer": {"seconds", "seconds_min", "seconds_all", "peak_rss_mb", "threads", "input", "precision", "rounds"} | CASE,
    "upscale": {"seconds", "peak_rss_mb", "baseline_rss_mb", "call_rss_mb", "output_shape", "tile", "tile_overlap",
                "tile_passes", "threads"} | CASE,
    "data": {"samples_per_s", "batches", "batch", "patch_size", "num_workers", "setup_s", "threads"} | CASE,
    "data_2k": {"default_samples_per_s_per_core", "fast_samples_per_s_per_core"} | CASE,
    "variant": {"train_ref", "train_ours", "train_mixed", "infer_ref", "infer_ours", "infer_ours_bf16",
                "train_speedup_vs_reference", "step_gflop", "fwd_gflop_per_sample", "train_ref_gflops",
                "train_ours_gflops", "train_fraction_of_peak", "train_ref_fraction_of_peak", "numerics",
                "train_mixed_speedup_vs_reference", "mixed_numerics", "infer_speedup_vs_reference",
                "infer_max_abs_diff", "infer_bf16_speedup_vs_reference", "infer_bf16_max_abs_diff"},
}  # fmt: skip


def has_keys(obj: dict, section: str) -> None:
    assert isinstance(obj, dict), (section, obj)
    assert not KEYS[section] - set(obj), (section, sorted(KEYS[section] - set(obj)))


@pytest.mark.slow
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

    assert not TOP_LEVEL - set(report), sorted(TOP_LEVEL - set(report))
    assert isinstance(report["device"], str) and report["device"]
    for key in HEADLINE_NUMBERS:
        assert isinstance(report[key], float) and report[key] > 0, (key, report[key])
    assert report["numerics_ok"] is True
    assert set(report["targets_met"]) == set(report["targets"])

    has_keys(report["peak"], "peak")
    ((name, variant),) = report["variants"].items()
    assert name == "drn_tiny_x4"
    has_keys(variant, "variant")
    for case in ("train_ref", "train_ours", "train_mixed"):
        has_keys(variant[case], "train_ref" if case == "train_ref" else "train_ours")
        assert variant[case]["step_s"] > 0 and variant[case]["samples_per_s"] > 0
        assert len(variant[case]["losses"]) == 2
    assert variant["train_ours"]["channels_last"] is True
    # --quick forces the bf16 mixed-precision case (auto runs it only where bf16 is fast: CUDA, AMX CPUs).
    assert report["mixed_precision"]["overrides"][0] == "trainer.precision=bf16-mixed"
    assert variant["mixed_numerics"]["ok"] is True and report["mixed_numerics_ok"] is True
    assert variant["mixed_numerics"]["rel_diff"][0] > 0  # bf16 really ran: not the fp32 losses again
    assert report["targets_met"]["train_mixed_speedup_vs_reference"] is None  # the 2.5x target is for CUDA
    for case in ("infer_ref", "infer_ours", "infer_ours_bf16"):
        has_keys(variant[case], "infer")
    assert variant["infer_ours_bf16"]["precision"] == "bf16" and variant["infer_bf16_max_abs_diff"] < 8.0
    assert variant["numerics"]["ok"] is True
    assert variant["step_gflop"] > 0 and variant["infer_max_abs_diff"] < 1e-2

    for result in (report["upscale"]["whole"], report["upscale"]["tiled"], report["tiled_2048"]):
        has_keys(result, "upscale")
        assert result["peak_rss_mb"] > 0 and result["seconds"] > 0
    assert report["upscale"]["tiled"]["tile"] is not None and report["upscale"]["whole"]["tile"] is None
    has_keys(report["data"], "data")
    assert report["data"]["samples_per_s"] > 0
    if (REPO / "benchmarks" / "data_2k.py").exists():  # --quick runs it once the file is there
        has_keys(report["data_2k"], "data_2k")
        assert report["data_2k"]["default_samples_per_s_per_core"] > 0
        assert report["data_2k"]["fast_samples_per_s_per_core"] > 0

    assert "Targets" in proc.stdout and str(out.resolve()) in proc.stdout


def test_mixed_precision_recipe_per_device(monkeypatch) -> None:
    """bf16 where it is fast: CUDA with torch.compile, CPUs with AMX; none on other CPUs (bf16 is slower there)."""
    import common

    assert common.mixed_precision_overrides("cuda") == ["trainer.precision=bf16-mixed", "compile=true"]
    monkeypatch.setattr(common, "cpu_has_amx_bf16", lambda: False)
    assert common.mixed_precision_overrides("cpu") is None
    monkeypatch.setattr(common, "cpu_has_amx_bf16", lambda: True)
    assert common.mixed_precision_overrides("cpu") == ["trainer.precision=bf16-mixed"]
