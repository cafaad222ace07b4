"""Bench case `data_2k` (issue 20 item 3): training samples/s per core on 2K images, PNG store against npy store.

Makes DIV2K-like data (2040x1360 HR PNGs of real photo content: mosaics of scikit-image's photos at their native
resolution, not noise, so PNG decoding costs what it does on DIV2K; X2/X4 LR PNGs made with MATLAB bicubic), then
times one process (num_workers=0, one torch thread) drawing keyed samples at the paper's recipe (HR patch 384, x4)
through `PairedDataset(store="png")` (each sample decodes its HR and LR files) and `store="npy"` (patches read from
memory-mapped .npy files written once by `prepare`). Per core = samples per second of this process's CPU time, so
other jobs on a shared machine slow the wall clock but not the figure; wall-clock rates are reported alongside.
`run_data_2k(out)` fills and returns `out["data_2k"]`.
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

SIZE = (1360, 2040)  # (H, W) of a DIV2K-like image
SCALE, PATCH = 4, 384
PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "chelsea",
          "brick", "grass", "gravel", "camera")  # fmt: skip


def fake_2k(seed: int) -> np.ndarray:
    """A 2040x1360 mosaic of 4x3 photo tiles at native resolution (small photos upscaled 2x), seeded."""
    from PIL import Image

    from drn_lightning.data import load_demo_image

    rng = np.random.default_rng(seed)
    (h, w), rows, cols = SIZE, 3, 4
    out = np.zeros((h, w, 3), np.uint8)
    th, tw = -(-h // rows), w // cols
    for r in range(rows):
        for c in range(cols):
            photo = load_demo_image(PHOTOS[rng.integers(len(PHOTOS))])
            if photo.shape[0] < th or photo.shape[1] < tw:
                photo = np.asarray(
                    Image.fromarray(photo).resize((photo.shape[1] * 2, photo.shape[0] * 2), Image.Resampling.BICUBIC)
                )
            y, x = rng.integers(photo.shape[0] - th + 1), rng.integers(photo.shape[1] - tw + 1)
            tile = photo[y : y + th, x : x + tw]
            tile = tile[:, ::-1] if rng.random() < 0.5 else tile
            out[r * th : min((r + 1) * th, h), c * tw : (c + 1) * tw] = tile[: h - r * th]
    return out


def make_div2k(root: Path, n: int) -> tuple[Path, Path]:
    """root/HR/{k}.png and root/LR/X{2,4}/{k}x{f}.png as DIV2K ships them (default PNG compression)."""
    import torch
    from PIL import Image

    from drn_lightning.data.pyramid import chw, hwc
    from drn_lightning.ops.degrade import lr_pyramid

    for k in range(n):
        hr = fake_2k(k)
        (root / "HR").mkdir(parents=True, exist_ok=True)
        Image.fromarray(hr).save(root / "HR" / f"{k:04d}.png")
        with torch.no_grad():
            for f, level in zip((4, 2), lr_pyramid(chw(hr), SCALE), strict=True):
                (root / "LR" / f"X{f}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(hwc(level)).save(root / "LR" / f"X{f}" / f"{k:04d}x{f}.png")
    return root / "HR", root / "LR"


def _rate(ds: Any, keys: list[tuple[int, int]], batch: int) -> tuple[float, float]:
    """(samples per CPU second, per wall second) of a num_workers=0 loader over `keys` (first batch discounted)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ds, batch_sampler=[keys[i : i + batch] for i in range(0, len(keys), batch)], num_workers=0)
    it = iter(loader)
    next(it)
    cpu, wall = time.process_time(), time.perf_counter()
    count = sum(len(b["name"]) for b in it)
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)


def run_data_2k(out: dict[str, Any], quick: bool = False) -> dict[str, Any]:
    """Measure both stores; fills and returns out["data_2k"]."""
    import torch

    from drn_lightning.data import PairedDataset
    from drn_lightning.data.samplers import MixedBatchSampler

    torch.set_num_threads(1)
    images, batches, batch, rounds = (3, 3, 4, 1) if quick else (12, 12, 16, 3)
    work = Path(tempfile.mkdtemp(prefix="drn_data_2k_"))
    try:
        started = time.perf_counter()
        hr_dir, lr_dir = make_div2k(work / "DIV2K", images)
        made_s = time.perf_counter() - started
        png_bytes = sum(p.stat().st_size for p in (work / "DIV2K").rglob("*.png"))
        sampler = MixedBatchSampler(images, 0, batch, 0.0, batches + 1, seed=0, keyed=True)
        keys = [k for b in sampler for k in b]
        common: dict[str, Any] = {"hr_dir": hr_dir, "scale": SCALE, "patch_size": PATCH, "lr_dir": lr_dir, "cache_in_memory": False,
                  "samples_per_epoch": images, "cache_dir": work / "cache"}  # fmt: skip
        default, fast = PairedDataset(store="png", **common), PairedDataset(store="npy", **common)
        default.setup()
        started = time.perf_counter()
        fast.prepare()
        prepare_s = time.perf_counter() - started
        fast.setup()
        for key in keys[:: max(1, len(keys) // 8)]:  # equal samples, checked where the timing is taken
            a, b = default[key], fast[key]
            assert a["name"] == b["name"] and all(map(torch.equal, [a["hr"], *a["lr"]], [b["hr"], *b["lr"]]))
        rates: dict[str, list[tuple[float, float]]] = {"default": [], "fast": []}
        for _ in range(rounds):  # alternated, best round kept: other load hits both alike
            rates["default"].append(_rate(default, keys, batch))
            rates["fast"].append(_rate(fast, keys, batch))
        best = {k: max(v) for k, v in rates.items()}
        store = sum(p.stat().st_size for p in (work / "cache" / "npy_store").iterdir())
        result = {
            "default_samples_per_s_per_core": round(best["default"][0], 2),
            "fast_samples_per_s_per_core": round(best["fast"][0], 2),
            "ratio": round(best["fast"][0] / best["default"][0], 1),
            "default_samples_per_s_wall": round(best["default"][1], 2),
            "fast_samples_per_s_wall": round(best["fast"][1], 2),
            "fast_store": "npy (uncompressed, memory-mapped)",
            "images": images,
            "samples_timed": len(keys) - batch,
            "hr_patch": PATCH,
            "scale": SCALE,
            "png_mb_per_image": round(png_bytes / images / 2**20, 2),
            "store_mb_per_image": round(store / images / 2**20, 2),
            "prepare_s_per_image": round(prepare_s / images, 3),
            "make_data_s": round(made_s, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_average": [round(x, 2) for x in __import__("os").getloadavg()],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["data_2k"] = result
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run_data_2k({}, quick="--quick" in sys.argv), indent=1))
