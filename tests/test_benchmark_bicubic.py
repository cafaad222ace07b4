"""Literature check: MATLAB-bicubic x4/x8 on Set5/Set14 must reproduce the published baselines.

This exercises imresize (LR and SR), the mod-crop, Y conversion, quantisation, shaving, PSNR and
SSIM together; a wrong kernel, border rule, size rule or Y formula moves these by >0.03 dB.
Images are read in place from the shared benchmark folder (never copied); skipped when absent.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drn_lightning.metrics import psnr_y, ssim_y
from drn_lightning.ops import imresize

BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared/data/benchmarks"

PSNR_TOL = 0.03
SSIM_TOL = 0.005

# (set, scale) -> ((PSNR low, PSNR high), SSIM); Set14 PSNR is quoted as a range in the literature.
PUBLISHED = {
    ("Set5", 4): ((28.42, 28.42), 0.8104),
    ("Set5", 8): ((24.40, 24.40), 0.6580),
    ("Set14", 4): ((26.00, 26.10), 0.7027),
    ("Set14", 8): ((23.10, 23.19), 0.5660),
}


@cache
def _bicubic_scores(name: str, scale: int) -> dict[bool, tuple[float, float]]:
    """Mean (PSNR, SSIM) per Y convention; cached so each set/scale is resized only once."""
    folder = BENCHMARKS / name
    paths = sorted(folder.glob("*.png"))
    if not paths:
        pytest.skip(f"benchmark images not found in {folder}")
    scores: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for path in paths:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))  # greyscale (Set14/bridge) -> 3 equal channels
        hr = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
        h, w = hr.shape[-2:]
        hr = hr[:, : h - h % scale, : w - w % scale]  # mod-crop
        lr = imresize(hr, scale=1 / scale)  # uint8 in -> uint8 out, as saved LR PNGs
        sr = imresize(lr.double(), scale=scale)  # float; quantised inside the metric
        for round_y, per_image in scores.items():
            per_image.append(
                (psnr_y(sr, hr.double(), scale, round_y).item(), ssim_y(sr, hr.double(), scale, round_y).item())
            )
    return {k: (float(np.mean([p for p, _ in v])), float(np.mean([q for _, q in v]))) for k, v in scores.items()}


@pytest.mark.parametrize("round_y", [False, True], ids=["y_float", "y_rounded"])
@pytest.mark.parametrize(("name", "scale"), list(PUBLISHED), ids=[f"{n}-x{s}" for n, s in PUBLISHED])
def test_bicubic_baseline_matches_literature(name: str, scale: int, round_y: bool) -> None:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"benchmark folder absent: {BENCHMARKS}")
    psnr, ssim = _bicubic_scores(name, scale)[round_y]
    (lo, hi), ssim_ref = PUBLISHED[(name, scale)]
    assert lo - PSNR_TOL <= psnr <= hi + PSNR_TOL, f"{name} x{scale} PSNR {psnr:.3f} vs {lo}-{hi}"
    assert abs(ssim - ssim_ref) <= SSIM_TOL, f"{name} x{scale} SSIM {ssim:.4f} vs {ssim_ref}"
