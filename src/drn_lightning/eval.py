"""Benchmark evaluation as the SR literature does it: whole images, PSNR/SSIM on Y with `scale` pixels shaved."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig

from drn_lightning.files import claim_output, write_json
from drn_lightning.report import FILE_ONLY, print_table
from drn_lightning.training.config import as_typed, entry_point, unwritable_reason

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.utils.data import Dataset

# torch, torchmetrics and the models (~7 s) are imported when scoring starts: tab completion and `--cfg` stay fast.
log = logging.getLogger(__name__)
Upscaler = Callable[["Tensor"], "Tensor"]


def bicubic_upscaler(scale: int) -> Upscaler:
    """The literature's baseline: MATLAB-bicubic upscaling of the LR image."""
    from drn_lightning.ops.imresize import imresize

    return lambda lr: imresize(lr, scale=scale)


def model_upscaler(primal: nn.Module, self_ensemble: bool = False, tile: int | None = None) -> Upscaler:
    """Final primal output; tiling and self-ensembling go through the same `Upscaler` as `drn-sr upscale`."""
    from drn_lightning.inference import Upscaler as ModelUpscaler

    if not tile and not self_ensemble:
        return lambda lr: primal(lr)[-1]
    device = next(primal.parameters()).device
    return ModelUpscaler(primal, device=device, tile=tile, self_ensemble=self_ensemble).upscale_tensor


def evaluate(
    upscaler: Upscaler,
    datasets: Mapping[str, Dataset],
    scale: int,
    device: torch.device | str = "cpu",
    round_y: bool = False,
) -> dict[str, dict[str, Any]]:
    """{set: {psnr, ssim, images, degradation}} over whole images; metrics never sync, so one DDP rank can run it."""
    import torch

    from drn_lightning.metrics import PSNRY, SSIMY

    device = torch.device(device)
    results: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():  # no autograd state: less memory on whole images
        for name, dataset in datasets.items():
            psnr = PSNRY(scale, round_y=round_y, sync_on_compute=False).to(device)
            ssim = SSIMY(scale, round_y=round_y, sync_on_compute=False).to(device)
            for index in range(len(dataset)):  # type: ignore[arg-type]
                sample = dataset[index]
                hr = sample["hr"].unsqueeze(0).to(device)
                sr = upscaler(sample["lr"][0].unsqueeze(0).to(device))
                psnr.update(sr, hr)
                ssim.update(sr, hr)
            results[name] = {
                "psnr": float(psnr.compute()),
                "ssim": float(ssim.compute()),
                "images": len(dataset),  # type: ignore[arg-type]
                "degradation": getattr(dataset, "degradation", "bicubic"),  # how the LR was made
            }
    return results


def final_evaluation(cfg: DictConfig, primal: nn.Module, val_datasets: Mapping[str, Dataset], out: Path) -> dict:
    """Score the trained primal next to bicubic on the validation and extra sets (CPU, this process); write `out`."""
    import torch

    from drn_lightning.data.datasets import BenchmarkDataset

    scale, round_y, root = int(cfg.scale), bool(cfg.round_y), Path(str(cfg.eval_sets_root))
    datasets = dict(val_datasets)
    for name in cfg.get("eval_extra_sets") or []:
        if name not in datasets and (root / name).is_dir():
            datasets[name] = BenchmarkDataset(root, name, scale)
    primal = primal.eval().cpu().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # as reloaded
    ours = evaluate(model_upscaler(primal), datasets, scale, "cpu", round_y)
    bicubic = evaluate(bicubic_upscaler(scale), datasets, scale, "cpu", round_y)
    report = {
        name: {
            "model": {k: ours[name][k] for k in ("psnr", "ssim")},
            "bicubic": {k: bicubic[name][k] for k in ("psnr", "ssim")},
            "images": ours[name]["images"],
            "degradation": ours[name]["degradation"],
        }
        for name in datasets
    }
    write_json(report, out)
    columns = ("set", "images", "bicubic PSNR", "model PSNR", "gain (dB)", "bicubic SSIM", "model SSIM")
    rows = []
    for name, row in report.items():
        psnr, base_psnr = row["model"]["psnr"], row["bicubic"]["psnr"]
        ssims = f"{row['bicubic']['ssim']:.4f}", f"{row['model']['ssim']:.4f}"
        rows.append((name, str(row["images"]), f"{base_psnr:.2f}", f"{psnr:.2f}", f"{psnr - base_psnr:+.2f}", *ssims))
    table = print_table(f"{cfg.model.name} x{scale} vs bicubic (PSNR/SSIM on Y, {scale}px shaved)", columns, rows)
    log.info("final evaluation, also in %s:\n%s", out, table.rstrip(), extra=FILE_ONLY)  # into <run>/train.log
    return report


def run(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Evaluate the configured model (or bicubic) on the configured benchmark sets."""
    from drn_lightning.data.datasets import BenchmarkDataset
    from drn_lightning.inference import resolve_device
    from drn_lightning.models import check_finite, load_weights

    scale, out, root = int(cfg.scale), str(cfg.results_json), Path(str(cfg.data.root))
    reason = f"{out} is a folder" if os.path.isdir(out) else unwritable_reason(os.path.dirname(out) or ".")
    if reason is not None:  # known now, not after the whole evaluation
        raise ValueError(f"results_json={out!r}: cannot write there: {reason}")
    images = [p for name in cfg.data.sets for p in (root / str(name)).rglob("*") if p.is_file()]
    sources = [(k, cfg.get(k)) for k in ("weights", "dual_weights")] + [("data.sets", p) for p in images]
    claim_output(out, inputs=sources, overwrite=bool(cfg.get("overwrite")), option="results_json=")
    device = resolve_device(str(cfg.device))
    degradation = str(cfg.data.get("degradation") or "bicubic")
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r}: benchmark folder not found")
    datasets = {name: BenchmarkDataset(root, name, scale, degradation=degradation) for name in cfg.data.sets}
    if cfg.model.get("net") is None:
        if cfg.get("weights"):
            raise ValueError(f"weights={cfg.weights!r} given with model=bicubic; choose model=drn_s|drn_l|drn_tiny")
        upscaler, title = bicubic_upscaler(scale), f"bicubic x{scale}"
    elif not cfg.get("weights"):
        raise ValueError(f"model={cfg.model.name} needs weights=FILE (the authors' .pt or our .ckpt)")
    else:
        net = cfg.model.net  # a named variant is checked against the file, unless sized by hand
        variant = net.get("variant") if net.get("n_feats") is None and net.get("n_blocks") is None else None
        unverified = bool(cfg.get("allow_unverified"))
        primal, _, _ = load_weights(
            cfg.weights, cfg.get("dual_weights"), variant=variant, scale=scale, allow_unverified=unverified
        )
        check_finite(primal, cfg.weights)  # NaN/Inf weights would score as black images instead of failing
        upscaler = model_upscaler(primal.eval().to(device), bool(cfg.self_ensemble), cfg.get("tile"))
        title = f"{cfg.model.name} x{scale} ({cfg.weights})"
    title += "" if degradation == "bicubic" else f", {degradation} LR"
    scores = evaluate(upscaler, datasets, scale, device, bool(cfg.round_y))
    rows = [(name, f"x{scale}", f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", str(r["images"])) for name, r in scores.items()]
    print_table(title, ("set", "scale", "PSNR (dB)", "SSIM", "images"), rows)
    print(f"results: {write_json(scores, out)}")
    return scores


def failure_line(cfg: DictConfig, err: Exception) -> str:
    """The one `error:` line of a user error: an OptionError under the option as typed, else the file named."""
    return f"error: {as_typed(cfg, err)}"


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def task(cfg: DictConfig) -> None:
    """Hydra task; a user error prints one line naming the option or file, exit 2, instead of a traceback."""
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(failure_line(cfg, err), file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """`drn-eval` and `python -m drn_lightning.eval`: a mistyped key is one line with the closest valid keys."""
    entry_point(task, "eval")


if __name__ == "__main__":
    main()
