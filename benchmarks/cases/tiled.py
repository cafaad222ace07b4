"""upscale / tiled_2048: a big uint8 image through the `Upscaler` (as users call it), whole vs tiled, fresh process each.

upscale     a 1024x1024 image through DRN-S x4, whole image and in tiles: seconds and peak RSS
tiled_2048  a 2048x2048 image through the small drn_tiny x4, tiled: peak RSS against issue 15's target (40 % of
            the 2.86 GB it took when the whole output was held in float32)
"""

from __future__ import annotations

import time
from typing import Any

from common import Runner, current_rss_bytes, fmt, make_table, peak_rss_mb, sync


def case_upscale(p: dict[str, Any]) -> dict[str, Any]:
    import torch

    from peak_rss import random_upscaler

    tiling = (
        {"tile": p["tile"], "tile_overlap": p["tile_overlap"], "tile_passes": p["tile_passes"]} if p["tile"] else {}
    )
    upscaler, image = random_upscaler(p["variant"], p["scale"], (p["size"], p["size"]), p["device"], **tiling)
    baseline = current_rss_bytes() / 2**20
    t0 = time.perf_counter()
    sr = upscaler(image)
    sync(p["device"])
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "call_rss_mb": peak_rss_mb() - baseline,
        "output_shape": list(sr.shape),
        "tile": p["tile"],
        "tile_overlap": p["tile_overlap"] if p["tile"] else None,
        "tile_passes": p["tile_passes"] if p["tile"] else None,
        "threads": torch.get_num_threads(),
    }


def section(run: Runner, sizes: dict[str, Any], tile_passes: int, sections: set[str]) -> dict[str, Any]:
    """report["upscale"] and report["tiled_2048"]."""
    variant, scale = sizes["big_variant"]
    size, tile = sizes["big_size"], sizes["tile"]
    common = {"variant": variant, "scale": scale, "size": size, "tile_overlap": sizes["tile_overlap"],
              "tile_passes": tile_passes}  # fmt: skip
    whole = tiled = tiled_2048 = None
    if "upscale" in sections:
        whole = run("tiled.upscale", f"{variant}_x{scale}: {size}px whole image", {**common, "tile": None})
        tiled = run("tiled.upscale", f"{variant}_x{scale}: {size}px tiled ({tile})", {**common, "tile": tile})
    if "tiled_2048" in sections:
        side = sizes["tiled_2048_size"]
        tiled_2048 = run(
            "tiled.upscale",
            f"drn_tiny_x4: {side}px tiled ({tile}) into a uint8 output",
            {**common, "variant": "drn_tiny", "scale": 4, "size": side, "tile": tile},
        )
    upscale = {"whole": whole, "tiled": tiled, "variant": f"{variant}_x{scale}", "size": size}
    return {"upscale": upscale, "tiled_2048": tiled_2048}


def print_tables(console: Any, report: dict[str, Any]) -> None:
    up = report.get("upscale") or {}
    rows = []
    for mode in ("whole", "tiled"):
        r = up.get(mode) or {}
        label = (
            mode if mode == "whole" else f"tiled {r.get('tile')}+{r.get('tile_overlap')}, {r.get('tile_passes')} passes"
        )
        rows.append(
            (label, fmt(r.get("seconds"), ".1f"), fmt(r.get("peak_rss_mb"), ".0f"), fmt(r.get("call_rss_mb"), ".0f"))
        )
    title = f"{up.get('variant')} upscale of a {up.get('size')}x{up.get('size')} image (fresh process each)"
    console.print(make_table(title, ("mode", "seconds", "peak RSS MB", "RSS added by the call MB"), rows))
