"""infer: 128x128 -> x scale, eager contiguous `model(lr)[-1]` under no_grad (reference) vs our `Upscaler`
(inference_mode + channels_last), and `Upscaler(precision="bf16")` where bf16 is fast."""

from __future__ import annotations

from typing import Any

from common import Runner, best_round, fmt, make_networks, make_table, peak_rss_mb, round_tag, timed_calls


def case_run(p: dict[str, Any]) -> dict[str, Any]:
    import torch

    device, size, precision = p["device"], p["size"], p["precision"]
    primal, _ = make_networks(p["variant"], p["scale"])
    primal.eval().to(device)
    gen = torch.Generator().manual_seed(1)
    lr = (torch.rand(1, 3, size, size, generator=gen) * 255).round().to(device)
    result: dict[str, Any] = {}
    if p["impl"] == "ref":

        def run() -> None:
            with torch.no_grad():
                result["sr"] = primal(lr)[-1]

    else:
        from drn_lightning.inference import Upscaler

        upscaler = Upscaler(primal, device=device, precision=precision)

        def run() -> None:
            result["sr"] = upscaler.upscale_tensor(lr)

    out = timed_calls(run, device, p["warmup"], p["reps"])
    torch.save(result["sr"].detach().float().cpu().contiguous().clone(), p["tensor_out"])
    out.update(
        peak_rss_mb=peak_rss_mb(), threads=torch.get_num_threads(), input=[1, 3, size, size], precision=precision
    )
    return out


def section(
    run: Runner, name: str, variant: str, scale: int, sizes: dict[str, Any], rounds: int, bf16: bool
) -> dict[str, Any]:
    """One variant's inference cases, alternating reference, ours (and ours in bf16) for `rounds` rounds."""
    import torch

    kinds = [("ref", "ref", "fp32"), ("ours", "ours", "fp32")]
    if bf16:  # `Upscaler(precision="bf16")`, `drn-sr upscale --precision bf16`
        kinds.append(("ours_bf16", "ours", "bf16"))
    runs: dict[str, list[Any]] = {"ref": [], "ours": [], "ours_bf16": []}
    tensor = {kind: run.workdir / f"{name}_{kind}_sr.pt" for kind, _, _ in kinds}
    for r in range(rounds):
        for kind, impl, precision in kinds:
            params = {"variant": variant, "scale": scale, "size": sizes["infer_size"], "impl": impl,
                      "precision": precision, "warmup": sizes["infer_warmup"], "reps": sizes["infer_reps"],
                      "tensor_out": str(tensor[kind])}  # fmt: skip
            label = f"{name}: inference {sizes['infer_size']}px x{scale}, {kind}{round_tag(r, rounds)}"
            runs[kind].append(run("inference.run", label, params))
    best = {kind: best_round(results, "seconds") for kind, results in runs.items()}
    entry: dict[str, Any] = {"infer_ref": best["ref"], "infer_ours": best["ours"], "infer_ours_bf16": best["ours_bf16"]}
    if best["ref"]:
        reference_sr = torch.load(tensor["ref"])
        for kind, prefix in (("ours", "infer"), ("ours_bf16", "infer_bf16")):
            if best[kind]:
                entry[f"{prefix}_speedup_vs_reference"] = best["ref"]["seconds"] / best[kind]["seconds"]
                entry[f"{prefix}_max_abs_diff"] = float((reference_sr - torch.load(tensor[kind])).abs().max())
    return entry


def print_tables(console: Any, report: dict[str, Any]) -> None:
    rows = [
        (
            name,
            fmt((v.get("infer_ref") or {}).get("seconds"), ".3f"),
            fmt((v.get("infer_ours") or {}).get("seconds"), ".3f"),
            fmt(v.get("infer_speedup_vs_reference"), ".2f", "x"),
            fmt(v.get("infer_max_abs_diff"), ".2e"),
            fmt((v.get("infer_ours_bf16") or {}).get("seconds"), ".3f"),
            fmt(v.get("infer_bf16_speedup_vs_reference"), ".2f", "x"),
            fmt(v.get("infer_bf16_max_abs_diff"), ".2f"),
        )
        for name, v in report["variants"].items()
    ]
    columns = ("variant", "reference s", "ours s", "speedup", "max |diff|", "ours bf16 s", "bf16 speedup",
               "bf16 max |diff|")  # fmt: skip
    size = report["settings"]["infer_size"]
    console.print(make_table(f"Inference {size}x{size} -> x scale", columns, rows))
