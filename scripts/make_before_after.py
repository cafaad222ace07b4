"""Make docs/img/before_after.png: bicubic vs DRN vs the original on a photo crop, with PSNR-Y.

Run with trained weights to get the picture the README should show:
    python scripts/make_before_after.py --weights DRNS4x.pt
Without --weights a randomly initialised drn_tiny is used and the figure says so in its caption.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from drn_lightning.data.io import read_image
from drn_lightning.inference import Upscaler, load_upscaler
from drn_lightning.metrics import psnr_y
from drn_lightning.models import build_drn
from drn_lightning.ops.imresize import imresize

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "img" / "before_after.png"


def _load_photo(path: str | None) -> tuple[np.ndarray, str]:
    """The source photo: a file if given, else scikit-image's astronaut (public domain, NASA)."""
    if path:
        return read_image(path), os.path.basename(path)
    from skimage import data

    return data.astronaut(), "skimage astronaut (NASA, public domain)"


def _psnr(img: np.ndarray, hr: np.ndarray, scale: int) -> float:
    as_batch = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double()  # noqa: E731
    return float(psnr_y(as_batch(img), as_batch(hr), scale=scale)[0])


def main(argv: list[str] | None = None) -> int:
    """Render the comparison and report PSNR-Y and the file size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="authors' .pt or our .ckpt; default: random drn_tiny (untrained)")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 4, 8), help="used only without --weights")
    parser.add_argument("--image", help="photo to crop (default: skimage astronaut)")
    parser.add_argument("--crop", type=int, nargs=3, default=(40, 170, 128), metavar=("TOP", "LEFT", "SIZE"))
    parser.add_argument("--zoom", type=int, default=2, help="nearest-neighbour display zoom (default 2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    if args.weights:
        upscaler = load_upscaler(args.weights, device=args.device)
        label = f"DRN ({upscaler.info['variant']} x{upscaler.scale}, {os.path.basename(args.weights)})"
        caption = f"weights: {os.path.basename(args.weights)}"
    else:
        torch.manual_seed(0)
        primal, _ = build_drn("drn_tiny", args.scale, dual=False)
        upscaler = Upscaler(primal, device=args.device)
        label = f"DRN (random drn_tiny x{args.scale})"
        caption = "UNTRAINED random-weight drn_tiny: shows the pipeline, not DRN's quality"
    scale = upscaler.scale

    photo, source = _load_photo(args.image)
    top, left, size = args.crop
    size -= size % scale
    hr = np.ascontiguousarray(photo[top : top + size, left : left + size])
    if hr.shape[:2] != (size, size):
        sys.exit(f"error: --crop {top} {left} {size} falls outside the {photo.shape[1]}x{photo.shape[0]} image")
    lr_t = imresize(torch.from_numpy(hr).permute(2, 0, 1).contiguous(), scale=1 / scale)
    bicubic = imresize(lr_t, scale=scale).permute(1, 2, 0).numpy()
    sr = upscaler(lr_t.permute(1, 2, 0).numpy())
    p_bic, p_drn = _psnr(bicubic, hr, scale), _psnr(sr, hr, scale)

    panels = [
        (bicubic, f"bicubic x{scale}\n{p_bic:.2f} dB"),
        (sr, f"{label}\n{p_drn:.2f} dB"),
        (hr, "original (HR)\nPSNR-Y vs this"),
    ]
    side = size * args.zoom
    dpi = 100
    fig, axes = plt.subplots(1, 3, figsize=(3 * side / dpi + 0.4, side / dpi + 0.9), dpi=dpi)
    for ax, (img, title) in zip(axes, panels):
        ax.imshow(np.kron(img, np.ones((args.zoom, args.zoom, 1), dtype=np.uint8)), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.text(0.5, 0.01, f"{caption}; photo: {source}", ha="center", fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.06, wspace=0.03)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=dpi)
    plt.close(fig)
    print(f"PSNR-Y bicubic {p_bic:.2f} dB, {label} {p_drn:.2f} dB")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
