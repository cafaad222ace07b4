"""Collect a multirun (e.g. a rho sweep) into a table and a PSNR-vs-rho plot.

    python -m drn_lightning.report outputs/train/multiruns/2026-11-25_10-00-00 [--x data.unpaired_ratio]

Reads each job's `.hydra/config.yaml` and `eval.json` / `metrics.json`; writes `report.json`, `report.csv`
and `psnr_vs_<x>.png` into the multirun directory and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

DEFAULT_X = "data.unpaired_ratio"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def collect_runs(multirun_dir: str | Path, x_key: str = DEFAULT_X) -> list[dict[str, Any]]:
    """One row per finished job: the swept value, per-set model/bicubic PSNR and SSIM, and the val PSNR."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: multirun directory not found")
    rows = []
    for config_path in sorted(root.glob("*/.hydra/config.yaml")):
        job_dir = config_path.parent.parent
        cfg = OmegaConf.load(config_path)
        x_value = OmegaConf.select(cfg, x_key)
        metrics = _read_json(job_dir / "metrics.json")
        evaluation = _read_json(job_dir / "eval.json")
        if not metrics and not evaluation:
            continue  # a job that did not finish
        row: dict[str, Any] = {"job": job_dir.name, x_key: x_value, "val_psnr": metrics.get("val/psnr")}
        for set_name, scores in evaluation.items():
            row[f"{set_name}/psnr"] = scores["model"]["psnr"]
            row[f"{set_name}/ssim"] = scores["model"]["ssim"]
            row[f"{set_name}/bicubic_psnr"] = scores["bicubic"]["psnr"]
        rows.append(row)
    if not rows:
        raise ValueError(f"{root}: no finished jobs (no */.hydra/config.yaml with metrics.json or eval.json)")
    return sorted(rows, key=lambda r: (r[x_key] is None, r[x_key] if r[x_key] is not None else 0))


def set_names(rows: list[dict[str, Any]]) -> list[str]:
    """Benchmark sets present in the rows, in first-seen order."""
    names: list[str] = []
    for row in rows:
        for key in row:
            if key.endswith("/psnr") and not key.endswith("bicubic_psnr"):
                name = key[: -len("/psnr")]
                if name not in names:
                    names.append(name)
    return names


def plot_rows(rows: list[dict[str, Any]], x_key: str, path: Path) -> Path:
    """PSNR of each set against the swept value, with the bicubic level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = set_names(rows)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.5 * max(1, len(names)), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names or ["val"]):
        pairs = [(r[x_key], r.get(f"{name}/psnr", r.get("val_psnr"))) for r in rows]
        points = [(x, float(y)) for x, y in pairs if x is not None and y is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "o-", label="DRN")
            best = max(points, key=lambda p: p[1])
            ax.annotate(f"best {best[1]:.2f} dB", best, textcoords="offset points", xytext=(0, 8), ha="center")
        bicubic = [r.get(f"{name}/bicubic_psnr") for r in rows if r.get(f"{name}/bicubic_psnr") is not None]
        if bicubic:
            ax.axhline(bicubic[0], color="gray", linestyle="--", label="bicubic")
        ax.set_title(name)
        ax.set_xlabel(x_key.rsplit(".", 1)[-1])
        ax.set_ylabel("PSNR-Y (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(multirun_dir: str | Path, x_key: str = DEFAULT_X) -> dict[str, Path]:
    """Collect, print, and write report.json, report.csv and the plot; returns the written paths."""
    root = Path(multirun_dir)
    rows = collect_runs(root, x_key)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=f"{root} ({len(rows)} runs)")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{row[c]:.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns))
    Console().print(table)
    paths = {"json": root / "report.json", "csv": root / "report.csv"}
    paths["json"].write_text(json.dumps(rows, indent=2) + "\n")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    try:
        paths["plot"] = plot_rows(rows, x_key, root / f"psnr_vs_{x_key.rsplit('.', 1)[-1]}.png")
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install 'drn-lightning[plots]')")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line: one multirun directory in, table and files out; errors are one line."""
    parser = argparse.ArgumentParser(prog="python -m drn_lightning.report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun_dir", help="a Hydra multirun directory (holds 0/, 1/, ... job folders)")
    parser.add_argument("--x", default=DEFAULT_X, help=f"the swept config key to plot against (default {DEFAULT_X})")
    args = parser.parse_args(argv)
    try:
        write_report(args.multirun_dir, args.x)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
