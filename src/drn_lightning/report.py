"""Collect a multirun (e.g. a rho sweep) into a table and a PSNR-vs-rho plot, averaged over seeds."""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Column, Table

from drn_lightning.files import atomic_write, claim_output, write_json

DEFAULT_X = "data.unpaired_ratio"
FILE_ONLY = {"file_only": True}  # `extra` of a log record for the run's log file: the console showed it another way


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def print_rich(renderable: Any, width: int | None = None) -> str:
    """Print a rich table or tree to the console; returns it as plain text (120 columns unless `width`) for a file."""
    Console(width=width).print(renderable)
    text = io.StringIO()
    Console(file=text, width=width or 120, color_system=None).print(renderable)
    return text.getvalue()


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]], width: int | None = None) -> str:
    """One row per set or sweep value, as papers print them (`set` left-aligned, numbers right); returns it as text."""
    table = Table(*(Column(c, justify="left" if c == "set" else "right") for c in columns), title=title)
    for row in rows:
        table.add_row(*row)
    return print_rich(table, width)


def collect_runs(
    multirun_dir: str | Path, x_key: str = DEFAULT_X, keys: Sequence[str] = ("seed",)
) -> list[dict[str, Any]]:
    """One row per finished job: the swept value, the values of `keys`, per-set PSNR/SSIM (and bicubic's), val PSNR."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: multirun directory not found")
    rows = []
    for config_path in sorted(root.glob("*/.hydra/config.yaml")):
        job_dir = config_path.parent.parent
        cfg = OmegaConf.load(config_path)
        metrics, evaluation = _read_json(job_dir / "metrics.json"), _read_json(job_dir / "eval.json")
        if not metrics and not evaluation:
            continue  # a job that did not finish
        row: dict[str, Any] = {"job": job_dir.name, x_key: OmegaConf.select(cfg, x_key)}
        for key in keys:  # as JSON/CSV scalars (lists and dicts as their text); the swept value stays as it is
            value = OmegaConf.select(cfg, key)
            row.setdefault(key, value if value is None or isinstance(value, bool | int | float | str) else str(value))
        row["val_psnr"] = metrics.get("val/psnr")
        for set_name, scores in evaluation.items():
            row[f"{set_name}/psnr"] = scores["model"]["psnr"]
            row[f"{set_name}/ssim"] = scores["model"]["ssim"]
            row[f"{set_name}/bicubic_psnr"] = scores["bicubic"]["psnr"]
        rows.append(row)
    if not rows:
        raise ValueError(f"{root}: no finished jobs (no */.hydra/config.yaml with metrics.json or eval.json)")
    return sorted(rows, key=lambda r: (r[x_key] is None, r[x_key] if r[x_key] is not None else 0))


def summarize(rows: list[dict[str, Any]], x_key: str = DEFAULT_X, by: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Mean, sample std (0 for one run) and count of every score over the rows sharing `by` and `x_key`: over seeds."""
    keys = (*by, x_key)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    summary = []
    for values, members in groups.items():
        entry: dict[str, Any] = dict(zip(keys, values))
        entry["runs"] = len(members)
        scored = (k for r in members for k in r if k == "val_psnr" or k.endswith(("/psnr", "/ssim", "/bicubic_psnr")))
        for column in dict.fromkeys(scored):
            scores = [float(r[column]) for r in members if r.get(column) is not None]
            if scores:
                entry[column] = statistics.fmean(scores)
                entry[f"{column}_std"] = statistics.stdev(scores) if len(scores) > 1 else 0.0
        summary.append(entry)
    return sorted(summary, key=lambda e: tuple((e[k] is None, str(e[k]) if k in by else e[k] or 0) for k in keys))


def set_names(rows: list[dict[str, Any]]) -> list[str]:
    """Benchmark sets present in the rows, in first-seen order."""
    return list(dict.fromkeys(key.removesuffix("/psnr") for row in rows for key in row if key.endswith("/psnr")))


def plot_rows(rows: list[dict[str, Any]], x_key: str, path: Path, by: Sequence[str] = ()) -> Path:
    """PSNR of each set against the swept value, a line per `by` group (error bars from `summarize`), bicubic dashed."""
    from matplotlib.figure import Figure  # no pyplot: no backend, no global figure to close

    panels = {name: f"{name}/psnr" for name in set_names(rows)} or {"val": "val_psnr"}
    cols = min(3, len(panels))
    grid_rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.5 * cols, 3.6 * grid_rows))
    axes = fig.subplots(grid_rows, cols, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    curves: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        curves.setdefault(", ".join(f"{k.rsplit('.', 1)[-1]}={row.get(k)}" for k in by) or "DRN", []).append(row)
    for ax, (name, column) in zip(axes.flat, panels.items()):
        for label, members in curves.items():
            points = [(r[x_key], r.get(column), r.get(f"{column}_std", 0.0)) for r in members]
            points = [p for p in points if p[0] is not None and p[1] is not None]
            if points:
                xs, ys, errs = zip(*points)
                ax.errorbar(xs, ys, yerr=errs, fmt="o-", capsize=3, label=label)
        bicubic = [r[f"{name}/bicubic_psnr"] for r in rows if r.get(f"{name}/bicubic_psnr") is not None]
        if bicubic:
            ax.axhline(bicubic[0], color="gray", linestyle="--", label="bicubic")
        ax.set(title=name, xlabel=x_key.rsplit(".", 1)[-1], ylabel="PSNR-Y (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _write_rows(rows: list[dict[str, Any]], stem: Path) -> dict[str, Path]:
    paths = {"json": write_json(rows, stem.with_suffix(".json"))}
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    paths["csv"] = atomic_write(stem.with_suffix(".csv"), lambda handle: handle.write(text.getvalue().encode()))
    return paths


def write_report(
    multirun_dir: str | Path, x_key: str = DEFAULT_X, by: Sequence[str] = (), overwrite: bool = False
) -> dict[str, Path]:
    """Print PSNR as mean ± std per set; write report.json/csv (per job), summary.json/csv and psnr_vs_<x>.png."""
    root, plot = Path(multirun_dir), f"psnr_vs_{x_key.rsplit('.', 1)[-1]}.png"
    inputs = [("multirun_dir", path) for path in root.glob("*/*.json")]  # jobs' metrics.json, eval.json
    for name in ("report.json", "report.csv", "summary.json", "summary.csv", plot):  # all refused before any is written
        claim_output(root / name, inputs=inputs, overwrite=overwrite, option="")
    rows = collect_runs(root, x_key, ("seed", *by))
    summary = summarize(rows, x_key, by)
    names, keys = set_names(summary), (*by, x_key)
    columns = [column.rsplit(".", 1)[-1] for column in (*keys, "runs", *(f"{n} PSNR" for n in names))]
    cells = []
    for row in summary:
        scores = [row.get(f"{n}/psnr") for n in names]
        psnr = [f"{m:.2f} ± {row[f'{n}/psnr_std']:.2f}" if m is not None else "" for n, m in zip(names, scores)]
        cells.append([*(str(row.get(k)) for k in (*keys, "runs")), *psnr])
    title, width = f"{root}: {len(rows)} runs, PSNR-Y mean ± std over seeds", max(120, 24 * (len(keys) + len(names)))
    print_table(title, columns, cells, width)
    paths = _write_rows(rows, root / "report")
    paths.update({f"summary_{k}": v for k, v in _write_rows(summary, root / "summary").items()})
    try:
        paths["plot"] = plot_rows(summary, x_key, root / plot, by)
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
    parser.add_argument("--overwrite", action="store_true", help="replace the report files of an earlier report")
    args = parser.parse_args(argv)
    try:
        write_report(args.multirun_dir, args.x, args.by, args.overwrite)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
