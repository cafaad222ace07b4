"""train: one training step, the authors'-style reference loop against a real `Trainer.fit` of our DRNLitModule.

  train_ref    the authors' trainer step: contiguous fp32 eager, plain autograd, one Adam per network,
               `loss.item()` per step
  train_ours   `Trainer.fit` of the DRNLitModule `drn_lightning.train.prepare` builds from the Hydra config (our
               defaults: channels_last, one Adam, cosine per step; logger, progress bar, checkpointing and validation
               off), on a fixed batch so data loading costs nothing; fp32, so its losses are checked against the reference
  train_mixed  the same in bf16 mixed precision where bf16 is fast (CUDA with torch.compile, CPUs with AMX)

Both sides start from the same weights and batch: their losses at step 0 and after one optimiser step are compared.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from typing import Any

from common import (
    Runner,
    best_round,
    compose_train_config,
    fmt,
    make_networks,
    make_table,
    peak_rss_mb,
    ratio,
    round_tag,
    sync,
)

NUMERICS_RTOL = 1e-4
MIXED_RTOL = 1e-2  # bf16 keeps 8 mantissa bits: a sanity bound for the mixed-precision losses, not an equality
DUAL_WEIGHT = 0.1  # the paper's lambda
SKIP_THRESHOLD = 1e6  # the authors' --skip_threshold default


def fixed_batch(scale: int, lr_size: int, batch: int, seed: int = 0) -> dict[str, Any]:
    """One paired training batch shaped like SRDataModule's: HR crops of a demo photo + MATLAB-bicubic LR pyramid."""
    import numpy as np
    import torch

    from drn_lightning.data.demo import load_demo_image
    from drn_lightning.ops.degrade import lr_pyramid

    image = load_demo_image("astronaut")
    hr_size = lr_size * scale
    if hr_size > min(image.shape[:2]):
        raise ValueError(f"HR patch {hr_size} is larger than the demo photo {image.shape[:2]}")
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(batch):
        y, x = (int(rng.integers(0, image.shape[k] - hr_size + 1)) for k in (0, 1))
        crops.append(image[y : y + hr_size, x : x + hr_size])
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().contiguous()
    lrs = [level.round().clamp(0, 255).contiguous() for level in lr_pyramid(hr, scale)]
    names = [f"astronaut_crop{i}.png" for i in range(batch)]
    return {"lr": lrs, "hr": hr, "paired": torch.ones(batch, dtype=torch.bool), "name": names}


class ReferenceTrainer:
    """The authors' trainer step (guoyongcs/DRN trainer.py), on our modules (same structure and weights).

    Contiguous fp32 eager, a separate Adam for the primal and for each dual, the loss checked on the host
    with `loss.item()` against the skip threshold every step, zero_grad on each optimiser, backward, step each.
    """

    def __init__(
        self, primal: Any, duals: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        import torch

        self.model, self.dual_models = primal.train(), [d.train() for d in duals]
        self.l1 = torch.nn.L1Loss()
        self.optimizer = torch.optim.Adam(primal.parameters(), lr=lr, betas=betas, eps=eps)
        self.dual_optimizers = [torch.optim.Adam(d.parameters(), lr=lr, betas=betas, eps=eps) for d in self.dual_models]
        self.error_last = 1e8

    def step(self, lr: list[Any], hr: Any) -> float:
        self.optimizer.zero_grad()
        for opt in self.dual_optimizers:
            opt.zero_grad()
        sr = self.model(lr[0])
        n = len(self.dual_models)
        sr2lr = [self.dual_models[i](sr[i - n]) for i in range(n)]
        loss_primary = self.l1(sr[-1], hr)
        for i in range(1, len(sr)):
            loss_primary = loss_primary + self.l1(sr[i - 1 - len(sr)], lr[i - len(sr)])
        loss_dual = self.l1(sr2lr[0], lr[0])
        for i in range(1, n):
            loss_dual = loss_dual + self.l1(sr2lr[i], lr[i])
        loss = loss_primary + DUAL_WEIGHT * loss_dual
        value = loss.item()
        if value < SKIP_THRESHOLD * self.error_last:
            loss.backward()
            self.optimizer.step()
            for opt in self.dual_optimizers:
                opt.step()
        return value


def config_adam(variant: str, scale: int) -> dict[str, Any]:
    """lr/betas/eps of our config for a variant, so the reference optimises with the same hyper-parameters."""
    with tempfile.TemporaryDirectory(prefix="drn_bench_") as workdir:
        opt = compose_train_config([f"model={variant}", f"scale={scale}"], workdir, workdir).model.optimizer
    return {"lr": float(opt.lr), "betas": tuple(float(b) for b in opt.betas), "eps": float(opt.eps)}


def ours_overrides(variant: str, scale: int, steps: int, device: str) -> list[str]:
    """Our defaults for the device, with everything that is not the training step switched off."""
    return [
        f"model={variant}", f"scale={scale}", f"trainer={'gpu' if device.startswith('cuda') else 'cpu'}",
        "data=demo",  # prepare() builds the DataModule; the timed steps use a fixed batch
        "trainer.precision=32-true",  # the fp32 step (the mixed-precision case adds its own override after this)
        "~logger", "callbacks=none", f"trainer.max_steps={steps}", "trainer.max_epochs=1", "test_after_fit=false",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "trainer.enable_checkpointing=false",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "torch_threads=null",  # torch's default threads, as the reference (the CPU demo pins one)
        "data.num_workers=0", "data.persistent_workers=false",
    ]  # fmt: skip


class FixedBatches:
    """An iterable of the same batch `steps` times: Lightning fetches it like a loader, at no data cost."""

    def __init__(self, batch: dict[str, Any], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self) -> Any:
        return (self.batch for _ in range(self.steps))

    def __len__(self) -> int:
        return self.steps


def lightning_losses(
    variant: str,
    scale: int,
    batch: dict[str, Any],
    steps: int,
    workdir: str,
    extra: list[str] | None = None,
    device: str = "cpu",
    timer: Any = None,
) -> tuple[list[float], Any]:
    """Run our `Trainer.fit` for `steps` steps on a fixed batch from `make_networks` weights; returns losses."""
    import pytorch_lightning as pl

    from drn_lightning.train import prepare

    cfg = compose_train_config(ours_overrides(variant, scale, steps, device) + list(extra or []), workdir, workdir)
    _, module, trainer = prepare(cfg)
    primal, duals = make_networks(variant, scale)
    module.primal.load_state_dict(primal.state_dict())
    if module.duals is not None:
        module.duals.load_state_dict(duals.state_dict())

    class LossRecorder(pl.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if len(self.losses) < 2:  # only the steps the numerics check compares; no host sync afterwards
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                self.losses.append(float(loss))

    recorder = LossRecorder()
    trainer.callbacks.extend([recorder] if timer is None else [recorder, timer])
    trainer.fit(module, train_dataloaders=FixedBatches(batch, steps))
    return recorder.losses, module


def step_stats(starts: list[float], ends: list[float], warmup: int, batch: int) -> dict[str, Any]:
    """Steady-state seconds per step: wall time from the start of the first timed step to the end of the last."""
    timed = len(starts) - warmup
    if timed < 1:
        raise RuntimeError(f"need more steps than warm-up steps ({len(starts)} <= {warmup})")
    total = ends[-1] - starts[warmup]
    per_step = [b - a for a, b in itertools.pairwise(starts[warmup:])] + [ends[-1] - starts[-1]]
    return {
        "step_s": total / timed,
        "step_s_median": statistics.median(per_step),
        "step_s_all": per_step,
        "warmup_s": [b - a for a, b in itertools.pairwise(starts)],
        "samples_per_s": batch * timed / total,
        "timed_steps": timed,
        "warmup_steps": warmup,
    }


def count_step_flops(primal: Any, duals: Any, batch: dict[str, Any]) -> dict[str, float]:
    """FLOPs of one training step's forward and backward (primal + duals + loss), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fwd_counter:
        sr = primal(batch["lr"][0])
        n = len(duals)
        loss = sum((o - t).abs().mean() for o, t in zip(sr[:-1], batch["lr"])) + (sr[-1] - batch["hr"]).abs().mean()
        loss = loss + DUAL_WEIGHT * sum((duals[i](sr[i - n]) - batch["lr"][i]).abs().mean() for i in range(n))
    with FlopCounterMode(display=False) as bwd_counter:
        loss.backward()
    primal.zero_grad(set_to_none=True)
    duals.zero_grad(set_to_none=True)
    fwd, bwd = fwd_counter.get_total_flops(), bwd_counter.get_total_flops()
    return {"fwd_flops": float(fwd), "bwd_flops": float(bwd), "step_flops": float(fwd + bwd)}


def case_ref(p: dict[str, Any]) -> dict[str, Any]:
    import torch

    device, variant, scale = p["device"], p["variant"], p["scale"]
    batch = fixed_batch(scale, p["lr_size"], p["batch"])
    lr, hr = [t.to(device) for t in batch["lr"]], batch["hr"].to(device)
    primal, duals = make_networks(variant, scale)
    primal.to(device)
    duals.to(device)
    adam = config_adam(variant, scale)
    trainer = ReferenceTrainer(primal, duals, **adam)
    starts, ends, losses = [], [], []
    for _ in range(p["warmup"] + p["steps"]):
        sync(device)
        starts.append(time.perf_counter())
        losses.append(trainer.step(lr, hr))
        sync(device)
        ends.append(time.perf_counter())
    out = step_stats(starts, ends, p["warmup"], p["batch"])
    out.update(losses=losses[:2], peak_rss_mb=peak_rss_mb(), threads=torch.get_num_threads(), adam=adam)
    if p.get("count_flops", True):
        out.update(count_step_flops(primal, duals, {"lr": lr, "hr": hr}))
    return out


def case_ours(p: dict[str, Any]) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    device = p["device"]

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_train_batch_start(self, *args: Any) -> None:
            sync(device)
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, *args: Any) -> None:
            sync(device)
            self.ends.append(time.perf_counter())

    timer = StepTimer()
    batch = fixed_batch(p["scale"], p["lr_size"], p["batch"])
    with tempfile.TemporaryDirectory(prefix="drn_bench_") as workdir:
        losses, module = lightning_losses(
            p["variant"], p["scale"], batch, p["warmup"] + p["steps"], workdir, p["overrides"], device, timer
        )
    out = step_stats(timer.starts, timer.ends, p["warmup"], p["batch"])
    optimizer = module.trainer.optimizers[0] if module.trainer is not None else None
    defaults = getattr(optimizer, "defaults", {})
    first = next(module.primal.parameters())
    out.update(
        losses=losses,
        peak_rss_mb=peak_rss_mb(),
        threads=torch.get_num_threads(),
        channels_last=bool(first.is_contiguous(memory_format=torch.channels_last) and first.dim() == 4),
        optimizer=type(optimizer).__name__,
        optimizer_fused=defaults.get("fused"),
        optimizer_foreach=defaults.get("foreach"),
        compile=bool(getattr(module, "compile_model", False)),
        overrides=list(p["overrides"]),
    )
    return out


def _loss_check(ours: dict[str, Any], ref: dict[str, Any], rtol: float) -> dict[str, Any]:
    diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours["losses"], ref["losses"])]
    return {"rel_diff": diffs, "rtol": rtol, "ok": bool(len(diffs) == 2 and max(diffs) <= rtol)}


def section(
    run: Runner,
    name: str,
    common: dict[str, Any],
    rounds: int,
    ours_override: list[str],
    mixed: list[str] | None,
    conv_peak: float | None,
) -> dict[str, Any]:
    """One variant's training cases, reference and ours alternating (ref, ours, ref, ours, ...) so that a
    neighbour's burst of CPU load on a shared machine hits both sides alike; each keeps its fastest round."""
    runs: dict[str, list[Any]] = {"ref": [], "ours": [], "mixed": []}
    for r in range(rounds):
        tag = round_tag(r, rounds)
        runs["ref"].append(
            run("train.ref", f"{name}: train step, reference (authors' loop){tag}", {**common, "count_flops": r == 0})
        )
        runs["ours"].append(
            run("train.ours", f"{name}: train step, ours (Lightning Trainer.fit){tag}", {**common, "overrides": ours_override})
        )  # fmt: skip
        if mixed is not None:
            runs["mixed"].append(
                run("train.ours", f"{name}: train step, ours, {' '.join(mixed)}{tag}", {**common, "overrides": [*ours_override, *mixed]})
            )  # fmt: skip
    ref, ours, mix = (best_round(runs[k], "step_s") for k in ("ref", "ours", "mixed"))
    entry: dict[str, Any] = {"train_ref": ref, "train_ours": ours, "train_mixed": mix}
    if ref and mix:
        entry["train_mixed_speedup_vs_reference"] = ref["step_s"] / mix["step_s"]
        entry["mixed_numerics"] = {"loss_mixed": mix["losses"], **_loss_check(mix, ref, MIXED_RTOL)}
    counted = next((r for r in runs["ref"] if r and "step_flops" in r), None)
    if ref and ours and counted:
        flops = counted["step_flops"]
        entry.update(
            train_speedup_vs_reference=ref["step_s"] / ours["step_s"],
            step_gflop=flops / 1e9,
            fwd_gflop_per_sample=counted["fwd_flops"] / common["batch"] / 1e9,
            train_ref_gflops=flops / ref["step_s"] / 1e9,
            train_ours_gflops=flops / ours["step_s"] / 1e9,
            train_fraction_of_peak=ratio(flops / ours["step_s"] / 1e9, conv_peak),
            train_ref_fraction_of_peak=ratio(flops / ref["step_s"] / 1e9, conv_peak),
            numerics={"loss_ref": ref["losses"], "loss_ours": ours["losses"], **_loss_check(ours, ref, NUMERICS_RTOL)},
        )
    return entry


def print_tables(console: Any, report: dict[str, Any]) -> None:
    settings, variants = report["settings"], report["variants"].items()
    rows = []
    for name, v in variants:
        ref, ours, num = v.get("train_ref") or {}, v.get("train_ours") or {}, v.get("numerics") or {}
        frac, ref_frac = v.get("train_fraction_of_peak"), v.get("train_ref_fraction_of_peak")
        rows.append((
            name,
            fmt(ref.get("step_s"), ".3f"),
            fmt(ours.get("step_s"), ".3f"),
            fmt(v.get("train_speedup_vs_reference"), ".3f", "x"),
            fmt(v.get("step_gflop"), ".0f"),
            fmt(v.get("train_ours_gflops"), ".0f"),
            fmt(100 * frac if frac else None, ".0f", "%"),
            fmt(100 * ref_frac if ref_frac else None, ".0f", "%"),
            f"{fmt(ref.get('peak_rss_mb'), '.0f')}/{fmt(ours.get('peak_rss_mb'), '.0f')}",
            ", ".join(f"{d:.1e}" for d in num.get("rel_diff", [])) + (" ok" if num.get("ok") else " FAIL"),
        ))  # fmt: skip
    columns = ("variant", "reference s/step", "ours s/step", "speedup", "GFLOP/step", "ours GFLOP/s",
               "ours % conv peak", "ref % conv peak", "ref/ours RSS MB", "loss rel diff (step 0, 1)")  # fmt: skip
    title = f"Training step (batch {settings['batch']}, LR {settings['lr_size']} -> HR x scale, fp32)"
    console.print(make_table(title, columns, rows))

    overrides = (report.get("mixed_precision") or {}).get("overrides")
    if not overrides:
        console.print("mixed precision: skipped (bf16 is slower than fp32 on this CPU: no AMX; --mixed on forces it)")
        return
    rows = []
    for name, v in variants:
        ref, mix, ours = v.get("train_ref") or {}, v.get("train_mixed") or {}, v.get("train_ours") or {}
        num = v.get("mixed_numerics") or {}
        rows.append((
            name,
            fmt(ref.get("step_s"), ".3f"),
            fmt(mix.get("step_s"), ".3f"),
            fmt(v.get("train_mixed_speedup_vs_reference"), ".2f", "x"),
            fmt(ours.get("step_s"), ".3f"),
            ", ".join(f"{d:.1e}" for d in num.get("rel_diff", []))
            + (f" (within {num['rtol']:g})" if num.get("ok") else " FAIL" if num else ""),
        ))  # fmt: skip
    columns = ("variant", "reference s/step", "mixed s/step", "speedup", "fp32 ours s/step",
               "loss rel diff vs fp32 ref (step 0, 1)")  # fmt: skip
    title = f"Training step, ours in mixed precision ({' '.join(overrides)}) vs the fp32 reference"
    console.print(make_table(title, columns, rows))
