"""drn_lightning.report over seeds (hand-computed means and sample standard deviations) and `make experiments`
(scripts/experiments.py) end to end on a tiny budget: every phase runs and its summary equals the jobs' own
eval.json files averaged by hand."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import execute_notebook
from drn_lightning.report import collect_runs, main, summarize

REPO_ROOT = Path(__file__).resolve().parents[1]


def _job(root: Path, name: str, config: dict, psnr: float, bicubic: float = 28.0) -> None:
    """A finished job folder as Hydra and drn_lightning.train leave it."""
    (root / name / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), root / name / ".hydra" / "config.yaml")
    scores = {"model": {"psnr": psnr, "ssim": 0.9}, "bicubic": {"psnr": bicubic, "ssim": 0.8}, "images": 2}
    (root / name / "eval.json").write_text(json.dumps({"demo_nearest": scores}))
    (root / name / "metrics.json").write_text(json.dumps({"val/psnr": psnr}))


def test_summary_is_the_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    for job, (rho, seed, degradation, psnr) in enumerate(
        [(0.0, 0, "nearest", 30.0), (0.0, 1, "nearest", 32.0), (0.3, 0, "nearest", 31.0), (0.3, 0, "bd", 29.5)]
    ):
        _job(tmp_path, str(job), {"seed": seed, "degradation": degradation, "data": {"unpaired_ratio": rho}}, psnr)
    (tmp_path / "9" / ".hydra").mkdir(parents=True)  # a job that never finished is left out
    OmegaConf.save(OmegaConf.create({"seed": 5, "data": {"unpaired_ratio": 0.5}}), tmp_path / "9/.hydra/config.yaml")

    rows = collect_runs(tmp_path, "data.unpaired_ratio", ("seed", "degradation"))
    assert [(r["data.unpaired_ratio"], r["seed"], r["degradation"]) for r in rows] == [
        (0.0, 0, "nearest"),
        (0.0, 1, "nearest"),
        (0.3, 0, "nearest"),
        (0.3, 0, "bd"),
    ]
    summary = summarize(rows, "data.unpaired_ratio", ["degradation"])
    by_key = {(s["degradation"], s["data.unpaired_ratio"]): s for s in summary}
    assert sorted(by_key) == [("bd", 0.3), ("nearest", 0.0), ("nearest", 0.3)]
    pair = by_key[("nearest", 0.0)]
    assert pair["runs"] == 2 and pair["demo_nearest/psnr"] == 31.0
    assert pair["demo_nearest/psnr_std"] == pytest.approx(math.sqrt(2.0))  # sample std of {30, 32}
    assert by_key[("nearest", 0.3)]["demo_nearest/psnr_std"] == 0.0 and by_key[("bd", 0.3)]["runs"] == 1
    assert pair["demo_nearest/bicubic_psnr"] == 28.0


def test_report_command_writes_summary_and_error_bar_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for job, (seed, psnr) in enumerate([(0, 30.0), (1, 31.0)]):
        _job(tmp_path, str(job), {"seed": seed, "data": {"unpaired_ratio": 0.3}}, psnr)
    assert main([str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "summary.json").read_text())
    assert row["runs"] == 2 and row["demo_nearest/psnr"] == 30.5
    assert (tmp_path / "summary.csv").read_text().splitlines()[0].count(",") == len(row) - 1
    assert len(json.loads((tmp_path / "report.json").read_text())) == 2
    assert (tmp_path / "psnr_vs_unpaired_ratio.png").read_bytes()[:4] == b"\x89PNG"


def test_report_of_a_folder_without_finished_jobs_is_one_error_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "drn_lightning.report", str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: {tmp_path}: no finished jobs (no */.hydra/config.yaml with metrics.json or eval.json)"
    ]


@pytest.mark.slow
def test_experiments_command_runs_every_phase_and_reports_the_jobs_means(
    tmp_path: Path, demo_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    out = tmp_path / "experiments"
    args = ["--out", str(out), "--steps", "3", "--base-steps", "3", "--adapt-steps", "2", "--seeds", "2"]
    done = subprocess.run(
        [
            sys.executable,
            "scripts/experiments.py",
            *args,
            "--rhos",
            "0.5",  # one point per degradation: the means over seeds are what is checked
            "--control-rhos",
            "0.5",
            "--benchmarks-dir",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**_env(), "DRN_CACHE_DIR": str(demo_cache)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["minutes"]) == ["adapt", "adapt_rho0", "base", "control", "dual", "rho"]
    jobs = {name: sorted(p.name for p in (out / name).iterdir() if p.is_dir()) for name in ("dual", "rho", "adapt")}
    assert jobs == {
        "dual": ["0", "1", "2", "3"],
        "rho": ["0", "1", "2", "3"],
        "adapt": ["0", "1", "2", "3", "4", "5", "6", "7"],
    }
    # rho sweep: each (degradation, rho) mean is the mean of its two seeds' eval.json, scored on the target LR.
    for entry in results["rho"]:
        degradation, rho = entry["degradation"], entry["data.unpaired_ratio"]
        scores = []
        for job in (out / "rho").iterdir():
            cfg = OmegaConf.load(job / ".hydra" / "config.yaml") if job.is_dir() else None
            if cfg is not None and cfg.degradation == degradation and cfg.data.unpaired_ratio == rho:
                evaluation = json.loads((job / "eval.json").read_text())
                assert evaluation[f"demo_{degradation}"]["degradation"] == degradation
                scores.append(evaluation[f"demo_{degradation}"]["model"]["psnr"])
        assert len(scores) == 2 and entry["runs"] == 2
        assert entry[f"demo_{degradation}/psnr"] == pytest.approx(sum(scores) / 2)
    assert {r["variant"] for r in results["adapt"]} == {"rho 0", "rho 0.3", "rho 0.3 + chain"}
    assert set(results["base"]) == {"demo", "demo_nearest", "demo_bd"}
    (control,) = results["control"]  # the Nearest sweep without the dual loss, two seeds
    assert control["runs"] == 2 and control["data.unpaired_ratio"] == 0.5
    for png in ("rho.png", "dual.png", "adaptation.png", "rho/psnr_vs_unpaired_ratio.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # The sweep notebook reads the rho sweep: mean ± std per degradation, and every job's training curve.
    env = {"DRN_MULTIRUN": str(out / "rho"), "DRN_SWEEP_BY": "degradation"}
    nb = execute_notebook(REPO_ROOT / "notebooks" / "sweep_analysis.ipynb", tmp_path, monkeypatch, env)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == 2
    assert any("4 runs with curves" in o.get("text", "") for o in outputs)
    table = next(o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {}))
    assert "runs" in table and "degradation" in table


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO_ROOT / "src")}
