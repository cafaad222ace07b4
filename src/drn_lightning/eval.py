"""Benchmark evaluation as the SR literature does it: whole images, PSNR/SSIM on Y with `scale` pixels shaved.

    python -m drn_lightning.eval model=bicubic scale=4 data=benchmark data.root=DIR 'data.sets=[Set5,Set14]' \
        results_json=OUT.json
    python -m drn_lightning.eval model=drn_s scale=4 weights=DRNS4x.pt data.root=DIR

OUT.json maps each set to {"psnr": float, "ssim": float, "images": int}.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import Dataset

from drn_lightning.config import unwritable_reason
from drn_lightning.files import write_json
from drn_lightning.metrics import PSNRY, SSIMY
from drn_lightning.ops.imresize import imresize

Upscaler = Callable[[Tensor], Tensor]


def bicubic_upscaler(scale: int) -> Upscaler:
    """The literature's baseline: MATLAB-bicubic upscaling of the LR image."""
    return lambda lr: imresize(lr, scale=scale)


def model_upscaler(primal: nn.Module, self_ensemble: bool = False, tile: int | None = None) -> Upscaler:
    """Final primal output; tiling and self-ensembling go through the same `Upscaler` as `drn-sr upscale`."""
    if not tile and not self_ensemble:
        return lambda lr: primal(lr)[-1]
    from drn_lightning.inference import Upscaler as ModelUpscaler

    device = next(primal.parameters()).device
    return ModelUpscaler(primal, device=device, tile=tile, self_ensemble=self_ensemble).upscale_tensor


@torch.inference_mode()
def evaluate(
    upscaler: Upscaler,
    datasets: Mapping[str, Dataset],
    scale: int,
    device: torch.device | str = "cpu",
    round_y: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score an upscaler on each dataset (whole images, one at a time); returns {set: {psnr, ssim, images}}.

    A single-process evaluation: the metrics never sync, so under DDP one rank can run it alone."""
    device = torch.device(device)
    results: dict[str, dict[str, Any]] = {}
    for name, dataset in datasets.items():
        psnr = PSNRY(scale, round_y=round_y, sync_on_compute=False).to(device)
        ssim = SSIMY(scale, round_y=round_y, sync_on_compute=False).to(device)
        for index in range(len(dataset)):  # type: ignore[arg-type]
            sample = dataset[index]
            lr = sample["lr"][0].unsqueeze(0).to(device)
            hr = sample["hr"].unsqueeze(0).to(device)
            sr = upscaler(lr)
            psnr.update(sr, hr)
            ssim.update(sr, hr)
        results[name] = {
            "psnr": float(psnr.compute()),
            "ssim": float(ssim.compute()),
            "images": len(dataset),  # type: ignore[arg-type]
            "degradation": getattr(dataset, "degradation", "bicubic"),  # how the LR was made
        }
    return results


def print_results(
    results: Mapping[str, Mapping[str, Any]], scale: int, title: str, console: Console | None = None
) -> None:
    """One row per set, as papers print them."""
    table = Table(title=title)
    for column in ("set", "scale", "PSNR (dB)", "SSIM", "images"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, row in results.items():
        table.add_row(name, f"x{scale}", f"{row['psnr']:.2f}", f"{row['ssim']:.4f}", str(row["images"]))
    (console or Console()).print(table)


def benchmark_datasets(
    root: str | os.PathLike[str], sets: list[str], scale: int, degradation: str = "bicubic"
) -> dict[str, Dataset]:
    """One BenchmarkDataset per set folder under `root`, LR made by `degradation`; a missing folder is an error."""
    from drn_lightning.data.datasets import BenchmarkDataset

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r}: benchmark folder not found")
    return {name: BenchmarkDataset(root, name, scale, degradation=degradation) for name in sets}


def final_evaluation(
    primal: nn.Module, datasets: Mapping[str, Dataset], scale: int, round_y: bool, model_name: str, out: Path
) -> dict[str, Any]:
    """Score a trained primal next to bicubic on `datasets` (CPU, this process only); write and print the table."""
    primal = primal.eval().cpu().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # as reloaded
    model_scores = evaluate(model_upscaler(primal), datasets, scale, "cpu", round_y)
    bicubic_scores = evaluate(bicubic_upscaler(scale), datasets, scale, "cpu", round_y)
    report = {
        name: {
            "model": {k: model_scores[name][k] for k in ("psnr", "ssim")},
            "bicubic": {k: bicubic_scores[name][k] for k in ("psnr", "ssim")},
            "images": model_scores[name]["images"],
            "degradation": model_scores[name]["degradation"],
        }
        for name in datasets
    }
    write_json(report, out)
    table = Table(title=f"{model_name} x{scale} vs bicubic (PSNR/SSIM on Y, {scale}px shaved)")
    for column in ("set", "images", "bicubic PSNR", "model PSNR", "gain (dB)", "bicubic SSIM", "model SSIM"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for name, row in report.items():
        model, bicubic = row["model"], row["bicubic"]
        table.add_row(
            name,
            str(row["images"]),
            f"{bicubic['psnr']:.2f}",
            f"{model['psnr']:.2f}",
            f"{model['psnr'] - bicubic['psnr']:+.2f}",
            f"{bicubic['ssim']:.4f}",
            f"{model['ssim']:.4f}",
        )
    Console().print(table)
    return report


def load_primal(cfg: DictConfig) -> nn.Module | None:
    """The network named by `model=` and `weights=`; None for `model=bicubic`."""
    from drn_lightning.models import load_weights
    from drn_lightning.models.official import check_finite

    if cfg.model.get("net") is None:
        if cfg.get("weights"):
            raise ValueError(f"weights={cfg.weights!r} given with model=bicubic; choose model=drn_s|drn_l|drn_tiny")
        return None
    if not cfg.get("weights"):
        raise ValueError(f"model={cfg.model.name} needs weights=FILE (the authors' .pt or our .ckpt)")
    variant = cfg.model.net.get("variant")
    expected_variant = (
        variant if cfg.model.net.get("n_feats") is None and cfg.model.net.get("n_blocks") is None else None
    )
    primal, _, _ = load_weights(cfg.weights, cfg.get("dual_weights"), variant=expected_variant, scale=cfg.scale)
    check_finite(primal, cfg.weights)  # NaN/Inf weights would score as black images instead of failing
    return primal.eval()


def run(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Evaluate the configured model (or bicubic) on the configured benchmark sets."""
    from drn_lightning.inference import resolve_device
    from drn_lightning.models import check_scale

    scale = check_scale(int(cfg.scale))
    out = str(cfg.results_json)
    reason = f"{out} is a folder" if os.path.isdir(out) else unwritable_reason(os.path.dirname(out) or ".")
    if reason is not None:  # known now, not after the whole evaluation
        raise ValueError(f"results_json={out!r}: cannot write there: {reason}")
    device = resolve_device(str(cfg.device))
    degradation = str(cfg.data.get("degradation") or "bicubic")
    try:
        datasets = benchmark_datasets(cfg.data.root, list(cfg.data.sets), scale, degradation)
    except ValueError as err:
        raise ValueError(f"data.{err}" if str(err).startswith("degradation=") else str(err)) from None
    primal = load_primal(cfg)
    if primal is None:
        upscaler, title = bicubic_upscaler(scale), f"bicubic x{scale}"
    else:
        primal = primal.to(device)
        upscaler = model_upscaler(primal, bool(cfg.self_ensemble), cfg.get("tile"))
        title = f"{cfg.model.name} x{scale} ({cfg.weights})"
    title += "" if degradation == "bicubic" else f", {degradation} LR"
    results = evaluate(upscaler, datasets, scale, device, bool(cfg.round_y))
    print_results(results, scale, title)
    path = write_json(results, cfg.results_json)
    print(f"results: {path}")
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; user errors print one line and exit non-zero instead of a traceback."""
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
