"""data / data_2k: samples/s of the training data pipeline, to set against the model's samples/s.

data     the demo data config's train loader (2 workers unless given), at the training cases' patch and at the
         paper's x4 recipe patch (384)
data_2k  `run_data_2k` of benchmarks/data_2k.py: the default and the fast pipeline on 2K images, per core
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from common import Runner, compose_train_config, fmt, make_table


def case_loader(p: dict[str, Any]) -> dict[str, Any]:
    """Samples/s of the demo data config's train loader, after its workers are up."""
    import torch
    from hydra.utils import instantiate

    workers = 2 if p["num_workers"] is None else p["num_workers"]
    overrides = ["data=demo", f"scale={p['scale']}", f"data.patch_size={p['patch_size']}",
                 f"data.batch_size={p['batch']}", f"data.steps_per_epoch={p['warmup'] + p['batches'] + 1}",
                 f"data.num_workers={workers}"]  # fmt: skip
    t_setup = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="drn_bench_data_") as workdir:
        dm = instantiate(compose_train_config(overrides, workdir, workdir).data)
        setup_s = time.perf_counter() - t_setup
        it = iter(dm.train_dataloader())
        for _ in range(p["warmup"]):
            next(it)
        t0 = time.perf_counter()
        count = sum(int(next(it)["hr"].shape[0]) for _ in range(p["batches"]))
        seconds = time.perf_counter() - t0
        del it
    return {"samples_per_s": count / seconds, "batches": p["batches"], "batch": p["batch"], "patch_size": p["patch_size"],
            "num_workers": dm.num_workers, "setup_s": setup_s, "threads": torch.get_num_threads()}  # fmt: skip


def case_data_2k(p: dict[str, Any]) -> dict[str, Any]:
    from data_2k import run_data_2k

    return run_data_2k({}, quick=p["quick"])


def section(run: Runner, sizes: dict[str, Any]) -> dict[str, Any]:
    """report["data"] and report["data_recipe"] (the full run only)."""
    scale = sizes["variants"][0][1]
    patch = sizes["data_patch"] or sizes["lr_size"] * scale  # the training cases' HR patch
    common = {"scale": scale, "batches": sizes["data_batches"], "warmup": sizes["data_warmup"],
              "num_workers": sizes["data_workers"]}  # fmt: skip
    label = f"data: DemoDataModule x{scale}"
    data = run("data.loader", f"{label}, patch {patch}, batch {sizes['data_batch']}",
               {**common, "patch_size": patch, "batch": sizes["data_batch"]})  # fmt: skip
    recipe = None
    if sizes["recipe_patch"]:
        recipe = run(
            "data.loader",
            f"{label}, recipe patch {sizes['recipe_patch']}, batch {sizes['recipe_batch']}",
            {**common, "patch_size": sizes["recipe_patch"], "batch": sizes["recipe_batch"],
             "batches": max(16, sizes["data_batches"] // 2)},
        )  # fmt: skip
    return {"data": data, "data_recipe": recipe}


def section_2k(run: Runner, quick: bool) -> dict[str, Any] | None:
    return run(
        "data.data_2k", "data_2k: default vs fast pipeline on 2K images (benchmarks/data_2k.py)", {"quick": quick}
    )


def print_tables(console: Any, report: dict[str, Any]) -> None:
    result = report.get("data_2k")
    if result:
        rows = [(key, fmt(value, ".1f")) for key, value in result.items() if key.endswith("_per_s_per_core")]
        console.print(make_table("Data pipeline on 2K images (data_2k)", ("metric", "samples/s per core"), rows))
