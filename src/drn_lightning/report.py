"""Collect a multirun (e.g. a rho sweep) into a table and a PSNR-vs-rho plot, averaged over seeds.

    python -m drn_lightning.report outputs/train/multiruns/2026-11-25_10-00-00 [--x data.unpaired_ratio]
    python -m drn_lightning.report DIR --x data.unpaired_ratio --by degradation   # one curve per degradation

Reads each job's `.hydra/config.yaml` and `eval.json` / `metrics.json`; writes `report.json`, `report.csv`
(one row per job), `summary.json`/`summary.csv` (mean and sample standard deviation over the jobs that differ
only in `seed`) and `psnr_vs_<x>.png` (error bars: one standard deviation) into the multirun directory, and
prints the summary.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

DEFAULT_X = "data.unpaired_ratio"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def collect_runs(
    multirun_dir: str | Path, x_key: str = DEFAULT_X, keys: Sequence[str] = ("seed",)
) -> list[dict[str, Any]]:
    """One row per finished job: the swept value, the config values of `keys`, per-set model/bicubic PSNR and
    SSIM, and the val PSNR."""
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
        row: dict[str, Any] = {"job": job_dir.name, x_key: x_value}
        row.update({key: _plain(OmegaConf.select(cfg, key)) for key in keys if key != x_key})
        row["val_psnr"] = metrics.get("val/psnr")
        for set_name, scores in evaluation.items():
            row[f"{set_name}/psnr"] = scores["model"]["psnr"]
            row[f"{set_name}/ssim"] = scores["model"]["ssim"]
            row[f"{set_name}/bicubic_psnr"] = scores["bicubic"]["psnr"]
        rows.append(row)
    if not rows:
        raise ValueError(f"{root}: no finished jobs (no */.hydra/config.yaml with metrics.json or eval.json)")
    return sorted(rows, key=lambda r: (r[x_key] is None, r[x_key] if r[x_key] is not None else 0))


def _plain(value: Any) -> Any:
    """A config value as a JSON/CSV scalar (lists and dicts as their text)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def summarize(rows: list[dict[str, Any]], x_key: str = DEFAULT_X, by: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Mean, sample standard deviation (0 for one run) and count of every score over the rows that share the
    values of `by` and `x_key`, i.e. over seeds."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in (*by, x_key)), []).append(row)
    summary = []
    for values, members in groups.items():
        entry: dict[str, Any] = dict(zip((*by, x_key), values))
        entry["runs"] = len(members)
        for column in _score_columns(members):
            scores = [float(r[column]) for r in members if r.get(column) is not None]
            if scores:
                entry[column] = statistics.fmean(scores)
                entry[f"{column}_std"] = statistics.stdev(scores) if len(scores) > 1 else 0.0
        summary.append(entry)
    return sorted(
        summary, key=lambda e: tuple((e[k] is None, str(e[k]) if k in by else e[k] or 0) for k in (*by, x_key))
    )


def _score_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Columns holding a score (PSNR, SSIM), in first-seen order."""
    return list(
        dict.fromkeys(k for r in rows for k in r if k == "val_psnr" or k.endswith(("/psnr", "/ssim", "/bicubic_psnr")))
    )


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


def plot_rows(rows: list[dict[str, Any]], x_key: str, path: Path, by: Sequence[str] = ()) -> Path:
    """PSNR of each set against the swept value (one line per `by` group, error bars from `summarize`), with the
    bicubic level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = set_names(rows)
    cols = min(3, max(1, len(names)))
    grid_rows = -(-max(1, len(names)) // cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(4.5 * cols, 3.6 * grid_rows), squeeze=False)
    for ax in axes.flat[len(names or ["val"]) :]:
        ax.set_visible(False)
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        curves.setdefault(", ".join(f"{k.rsplit('.', 1)[-1]}={row.get(k)}" for k in by) or "DRN", []).append(row)
    for ax, name in zip(axes.flat, names or ["val"]):
        column = f"{name}/psnr" if names else "val_psnr"
        for label, members in curves.items():
            points = [(r[x_key], r.get(column), r.get(f"{column}_std", 0.0)) for r in members]
            points = [p for p in points if p[0] is not None and p[1] is not None]
            if points:
                xs, ys, errs = zip(*points)
                ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=3, label=label)
        bicubic = [r.get(f"{name}/bicubic_psnr") for r in rows if r.get(f"{name}/bicubic_psnr") is not None]
        if bicubic:
            ax.axhline(bicubic[0], color="gray", linestyle="--", label="bicubic")
        ax.set_title(name)
        ax.set_xlabel(x_key.rsplit(".", 1)[-1])
        ax.set_ylabel("PSNR-Y (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _print_summary(title: str, summary: list[dict[str, Any]], keys: Sequence[str]) -> None:
    """The summary as a rich table: the keys, the run count and each set's PSNR as mean ± std (dB)."""
    names = set_names(summary)
    table = Table(title=title)
    for column in (*keys, "runs", *(f"{n} PSNR" for n in names)):
        table.add_column(column.rsplit(".", 1)[-1], justify="right")
    for row in summary:
        scores = [row.get(f"{n}/psnr") for n in names]
        cells = [f"{m:.2f} ± {row[f'{n}/psnr_std']:.2f}" if m is not None else "" for n, m in zip(names, scores)]
        table.add_row(*(str(row.get(k)) for k in (*keys, "runs")), *cells)
    Console(width=max(120, 24 * (len(keys) + len(names)))).print(table)


def _write_rows(rows: list[dict[str, Any]], stem: Path) -> dict[str, Path]:
    """`<stem>.json` and `<stem>.csv` of the rows."""
    from drn_lightning.files import atomic_write, write_json

    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_json(rows, stem.with_suffix(".json"))

    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(stem.with_suffix(".csv"), lambda handle: handle.write(text.getvalue().encode()))
    return {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv")}


def write_report(multirun_dir: str | Path, x_key: str = DEFAULT_X, by: Sequence[str] = ()) -> dict[str, Path]:
    """Collect, print, and write the per-job report, the summary over seeds and the plot; returns the paths."""
    root = Path(multirun_dir)
    rows = collect_runs(root, x_key, ("seed", *by))
    summary = summarize(rows, x_key, by)
    _print_summary(f"{root}: {len(rows)} runs, PSNR-Y mean ± std over seeds", summary, (*by, x_key))
    paths = _write_rows(rows, root / "report")
    paths.update({f"summary_{k}": v for k, v in _write_rows(summary, root / "summary").items()})
    try:
        paths["plot"] = plot_rows(summary, x_key, root / f"psnr_vs_{x_key.rsplit('.', 1)[-1]}.png", by)
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
    parser.add_argument("--by", action="append", default=[], help="a swept config key drawn as separate curves")
    args = parser.parse_args(argv)
    try:
        write_report(args.multirun_dir, args.x, args.by)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
