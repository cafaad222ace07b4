"""The paper's ablations at CPU scale in one command (`make experiments`; results in docs/experiments.md).

Hydra multiruns of `experiment=closed_loop` (drn_tiny x4 on the demo photos, paired and unpaired halves disjoint),
two jobs at a time through Hydra's joblib launcher, each reported by `drn_lightning.report` (mean and standard
deviation over seeds):
  dual        dual regression on vs off, paired bicubic data only
  rho         rho in {0, 0.1, 0.3, 0.5, 0.7, 0.9} for Nearest and for BD unpaired data, trained from scratch
  control     the Nearest rho sweep without the dual loss (model.dual=false): the unpaired samples then only take
              the place of paired ones, which separates what the dual loss does from what fewer pairs do
  base        one bicubic-trained model (P and D), the starting point of the adaptation
  adapt       the base fine-tuned with unpaired Nearest/BD LR at rho 0.3, with and without the chained dual term
  adapt_rho0  the same fine-tuning at rho 0 (paired data only, same steps): the control
Every job is scored on the held-out photos (target degradation and bicubic) and on Set5 when it is present.

    python scripts/experiments.py                      # about an hour on 2 cores
    python scripts/experiments.py --steps 40 --seeds 1 --rhos 0,0.5 --out /tmp/quick   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from drn_lightning.files import write_json
from drn_lightning.report import collect_runs, summarize, write_report

TRAIN = [sys.executable, "-m", "drn_lightning.train"]
DEGRADATIONS = ("nearest", "bd")


def set5_overrides(benchmarks_dir: Path) -> list[str]:
    """Validation (and final scores) on Set5 degraded like the target and on bicubic Set5, when Set5 is there."""
    if not (benchmarks_dir / "Set5").is_dir():
        return []
    dataset = f"_target_:drn_lightning.data.BenchmarkDataset,_partial_:true,root:'{benchmarks_dir}',set_name:Set5"
    return [
        f"+data.val_sets.Set5={{{dataset},degradation:${{degradation}}}}",
        f"+data.val_sets.Set5_bicubic={{{dataset}}}",
    ]


def _child_cpu_seconds() -> float:
    """CPU time (user + system) of every finished child process so far, the sweep jobs included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str], log: Path) -> dict[str, float]:
    """Run one training command (a multirun or a single run), its output in `log`; wall and CPU minutes taken."""
    started, cpu = time.perf_counter(), _child_cpu_seconds()
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[2:])} failed (exit {done.returncode}); see {log}")
    return {"wall": (time.perf_counter() - started) / 60, "cpu": (_child_cpu_seconds() - cpu) / 60}


def sweep(out: Path, name: str, overrides: list[str], jobs: int) -> dict[str, float]:
    """One Hydra multirun into out/name, two (or `jobs`) at a time; wall and CPU minutes taken."""
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    command = [*TRAIN, "-m", "experiment=closed_loop", *launcher, f"hydra.sweep.dir={out / name}", *overrides]
    return run(command, out / f"{name}.log")


def score_base(checkpoint: Path, demo_root: Path, benchmarks_dir: Path) -> dict[str, dict[str, float]]:
    """The bicubic-trained base model on every target: where the adaptation starts from."""
    from drn_lightning.data import BenchmarkDataset
    from drn_lightning.eval import evaluate, model_upscaler
    from drn_lightning.models import load_weights

    primal, _, _ = load_weights(checkpoint)
    sets = {}
    for degradation in ("bicubic", *DEGRADATIONS):
        suffix = "" if degradation == "bicubic" else f"_{degradation}"
        sets[f"demo{suffix}"] = BenchmarkDataset(demo_root, "val", 4, degradation=degradation)
        if (benchmarks_dir / "Set5").is_dir():
            sets[f"Set5{suffix}"] = BenchmarkDataset(benchmarks_dir, "Set5", 4, degradation=degradation)
    scores = evaluate(model_upscaler(primal.eval()), sets, 4, round_y=True)
    return {name: {"psnr": row["psnr"], "ssim": row["ssim"]} for name, row in scores.items()}


def adaptation_rows(out: Path) -> list[dict[str, Any]]:
    """The adaptation runs as one table: variant (rho 0 / rho 0.3 / rho 0.3 + chain) by degradation."""
    rows = []
    for name in ("adapt_rho0", "adapt"):
        for row in collect_runs(
            out / name, "data.unpaired_ratio", ("seed", "degradation", "model.loss.unpaired_chain")
        ):
            chain = " + chain" if row.pop("model.loss.unpaired_chain") else ""
            rows.append({"variant": f"rho {row['data.unpaired_ratio']}{chain}", **row})
    return summarize(rows, "variant", ("degradation",))


Panel = list[tuple[str, float, float]]


def plot_bars(panels: dict[str, Panel], bicubic: dict[str, float], path: Path) -> None:
    """One panel per title: a bar (mean, one-standard-deviation error bar) per label, bicubic dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, bars) in zip(axes.flat, panels.items()):
        labels, values, errors = zip(*bars)
        ax.bar(range(len(bars)), values, yerr=errors, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(bars)), labels, fontsize="small")
        if title in bicubic:
            ax.axhline(bicubic[title], color="gray", linestyle="--", label="bicubic")
            ax.legend(fontsize="small", loc="lower right")
        levels = [*values, bicubic.get(title, values[0])]
        ax.set_ylim(min(levels) - max(errors) - 0.3, max(levels) + max(errors) + 0.3)
        ax.set(title=title, ylabel="PSNR-Y (dB)")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_rho(results: dict[str, Any], sets: list[str], path: Path) -> None:
    """PSNR on the target LR against rho: one panel per (set, degradation), error bars one std over seeds, the
    Nearest control without the dual loss dashed, bicubic interpolation of the same LR dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(sets), len(DEGRADATIONS), figsize=(5.2 * len(DEGRADATIONS), 3.4 * len(sets)), squeeze=False
    )
    for row_axes, name in zip(axes, sets):
        for ax, degradation in zip(row_axes, DEGRADATIONS):
            column = f"{name}_{degradation}/psnr"
            curves = {"dual on": [r for r in results["rho"] if r["degradation"] == degradation]}
            if degradation == "nearest" and results.get("control"):
                curves["dual off (control)"] = results["control"]
            for label, rows in curves.items():
                rows = [r for r in rows if r.get(column) is not None]
                xs = [r["data.unpaired_ratio"] for r in rows]
                style = "o-" if label == "dual on" else "s--"
                ax.errorbar(
                    xs,
                    [r[column] for r in rows],
                    yerr=[r[f"{column}_std"] for r in rows],
                    fmt=style,
                    capsize=3,
                    label=label,
                )
            bicubic = curves["dual on"][0].get(column.replace("/psnr", "/bicubic_psnr"))
            if bicubic is not None:
                ax.axhline(bicubic, color="gray", linestyle=":", label="bicubic interpolation")
            title = "held-out photos" if name == "demo" else name
            ax.set(title=f"{title}, {degradation} LR", xlabel="unpaired ratio ρ", ylabel="PSNR-Y (dB)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def make_plots(results: dict[str, Any], out: Path) -> None:
    """rho.png, dual.png (dual on/off) and adaptation.png (before, rho 0, rho 0.3, + chain) from results.json."""
    sets = [s for s in ("demo", "Set5") if f"{s}/psnr" in results["dual"][0]]
    plot_rho(results, sets, out / "rho.png")
    titles = {"demo": "held-out photos", "Set5": "Set5"}
    panels, bicubic = {}, {}
    for name in sets:
        rows = results["dual"]
        panels[titles[name]] = [(f"dual {r['model.dual']}", r[f"{name}/psnr"], r[f"{name}/psnr_std"]) for r in rows]
        bicubic[titles[name]] = rows[0][f"{name}/bicubic_psnr"]
    plot_bars(panels, bicubic, out / "dual.png")
    panels, bicubic = {}, {}
    for degradation in DEGRADATIONS:
        for name in sets:
            column, title = f"{name}_{degradation}/psnr", f"{titles[name]}, {degradation} LR"
            rows = [r for r in results["adapt"] if r["degradation"] == degradation]
            before = results["base"][f"{name}_{degradation}"]["psnr"]
            panels[title] = [("before", before, 0.0)] + [(r["variant"], r[column], r[f"{column}_std"]) for r in rows]
            bicubic[title] = rows[0][column.replace("/psnr", "/bicubic_psnr")]
    plot_bars(panels, bicubic, out / "adaptation.png")


def _cell(row: dict[str, Any], column: str) -> str:
    """`mean ± std` of a summary column (dB), or a dash where the set was not scored."""
    if row.get(column) is None:
        return "–"
    std = row.get(f"{column}_std")
    return f"{row[column]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def tables_markdown(results: dict[str, Any]) -> str:
    """The three result tables of docs/experiments.md (PSNR-Y in dB, mean ± sample std over seeds)."""
    lines = ["| dual regression | held-out photos | Set5 |", "| --- | --- | --- |"]
    for row in results["dual"]:
        lines.append(
            f"| {'on' if row['model.dual'] else 'off'} | {_cell(row, 'demo/psnr')} | {_cell(row, 'Set5/psnr')} |"
        )
    first = results["dual"][0]
    lines.append(f"| bicubic | {_cell(first, 'demo/bicubic_psnr')} | {_cell(first, 'Set5/bicubic_psnr')} |")
    head = "| {} | held-out, {d} LR | Set5, {d} LR | held-out, bicubic LR | Set5, bicubic LR |"
    columns = ("demo_{d}/psnr", "Set5_{d}/psnr", "demo_bicubic/psnr", "Set5_bicubic/psnr")
    for degradation in DEGRADATIONS:
        rows = [r for r in results["rho"] if r["degradation"] == degradation]
        lines += ["", head.format("ρ", d=degradation), "| --- | --- | --- | --- | --- |"]
        for row in rows:
            cells = " | ".join(_cell(row, c.format(d=degradation)) for c in columns)
            lines.append(f"| {row['data.unpaired_ratio']} | {cells} |")
        bicubic = " | ".join(_cell(rows[0], c.format(d=degradation).replace("/psnr", "/bicubic_psnr")) for c in columns)
        lines.append(f"| bicubic | {bicubic} |")
    if results.get("control"):
        lines += ["", "| ρ | held-out, nearest LR: dual on | dual off | Set5, nearest LR: dual on | dual off |"]
        lines.append("| --- | --- | --- | --- | --- |")
        with_dual = {r["data.unpaired_ratio"]: r for r in results["rho"] if r["degradation"] == "nearest"}
        for row in results["control"]:
            on = with_dual.get(row["data.unpaired_ratio"], {})
            cells = [_cell(on, "demo_nearest/psnr"), _cell(row, "demo_nearest/psnr")]
            cells += [_cell(on, "Set5_nearest/psnr"), _cell(row, "Set5_nearest/psnr")]
            lines.append(f"| {row['data.unpaired_ratio']} | " + " | ".join(cells) + " |")
    for degradation in DEGRADATIONS:
        rows = [r for r in results["adapt"] if r["degradation"] == degradation]
        lines += ["", head.format("adaptation", d=degradation), "| --- | --- | --- | --- | --- |"]
        base = results["base"]
        names = (f"demo_{degradation}", f"Set5_{degradation}", "demo", "Set5")
        lines.append("| before (the base model) | " + " | ".join(_cell(base.get(n, {}), "psnr") for n in names) + " |")
        for row in rows:
            lines.append(
                f"| {row['variant']} | " + " | ".join(_cell(row, c.format(d=degradation)) for c in columns) + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the phases in order, then write results.json and the plots into --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/experiments") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps of every job (batch 8)")
    parser.add_argument("--base-steps", type=int, default=2000, help="steps of the bicubic model adapted later")
    parser.add_argument("--adapt-steps", type=int, default=500, help="fine-tuning steps of the adaptation jobs")
    parser.add_argument("--adapt-lr", type=float, default=2.0e-4, help="a tenth of the demo's training rate")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rhos", default="0,0.1,0.3,0.5,0.7,0.9")
    parser.add_argument("--jobs", type=int, default=2, help="jobs at a time (one core each)")
    parser.add_argument("--control-rhos", default="0,0.3,0.7,0.9", help="rho values of the control sweep")
    parser.add_argument(
        "--phases", default="dual,rho,control,base,adapt", help="phases to run; others must be in --out"
    )
    parser.add_argument(
        "--benchmarks-dir", type=Path, default=Path(os.environ.get("DRN_BENCHMARKS_DIR", "../shared/data/benchmarks"))
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = "seed=" + ",".join(str(s) for s in range(args.seeds))
    benchmarks_dir = args.benchmarks_dir.resolve()
    data = [f"paths.benchmarks_dir={benchmarks_dir}", *set5_overrides(benchmarks_dir)]
    common = [seeds, f"steps={args.steps}", *data]
    timing = out / "minutes.json"  # kept across calls with other --phases
    minutes: dict[str, dict[str, float]] = json.loads(timing.read_text()) if timing.is_file() else {}

    phases = args.phases.split(",")
    if "dual" in phases:
        dual = [*common, "degradation=bicubic", "data.unpaired_ratio=0", "model.dual=true,false"]
        minutes["dual"] = sweep(out, "dual", dual, args.jobs)
        write_json(minutes, timing)
        write_report(out / "dual", "model.dual")
    if "rho" in phases:
        rho = ["degradation=" + ",".join(DEGRADATIONS), f"data.unpaired_ratio={args.rhos}"]
        minutes["rho"] = sweep(out, "rho", [*common, *rho], args.jobs)
        write_json(minutes, timing)
        write_report(out / "rho", "data.unpaired_ratio", ["degradation"])
    if "control" in phases:
        control = [*common, "degradation=nearest", f"data.unpaired_ratio={args.control_rhos}", "model.dual=false"]
        minutes["control"] = sweep(out, "control", control, args.jobs)
        write_json(minutes, timing)
        write_report(out / "control", "data.unpaired_ratio")

    base = [*TRAIN, "experiment=closed_loop", f"hydra.run.dir={out / 'base'}", "degradation=bicubic", "torch_threads=2"]
    base += ["data.unpaired_ratio=0", f"steps={args.base_steps}", *data]
    if "base" in phases:
        minutes["base"] = run(base, out / "base.log")
        write_json(minutes, timing)
    adapt = [seeds, f"steps={args.adapt_steps}", *data, f"weights={out / 'base' / 'checkpoints' / 'last.ckpt'}"]
    adapt += [f"model.optimizer.lr={args.adapt_lr}", "degradation=" + ",".join(DEGRADATIONS)]
    chain = ["data.unpaired_ratio=0.3", "model.loss.unpaired_chain=false,true"]
    if "adapt" in phases:
        minutes["adapt"] = sweep(out, "adapt", [*adapt, *chain], args.jobs)
        write_json(minutes, timing)
        minutes["adapt_rho0"] = sweep(out, "adapt_rho0", [*adapt, "data.unpaired_ratio=0"], args.jobs)
        write_json(minutes, timing)

    cache = os.environ.get("DRN_CACHE_DIR") or Path(os.environ.get("DRN_DATA_DIR", "data")) / ".cache"
    demo_root = Path(cache) / "demo"  # paths.cache_dir/demo, as the jobs wrote it
    results = {
        "minutes": minutes,
        "dual": summarize(collect_runs(out / "dual", "model.dual"), "model.dual"),
        "rho": summarize(
            collect_runs(out / "rho", "data.unpaired_ratio", ("seed", "degradation")),
            "data.unpaired_ratio",
            ["degradation"],
        ),
        "control": summarize(collect_runs(out / "control", "data.unpaired_ratio"), "data.unpaired_ratio"),
        "base": score_base(out / "base" / "checkpoints" / "last.ckpt", demo_root, benchmarks_dir),
        "adapt": adaptation_rows(out),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    write_json(results, out / "results.json")
    make_plots(results, out)
    (out / "tables.md").write_text(tables_markdown(results))
    print(json.dumps({"minutes": minutes, "out": str(out)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
