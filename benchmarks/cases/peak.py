"""peak: the machine's measured GFLOP/s, a square fp32 matmul and a 64->64 3x3 conv (best of k)."""

from __future__ import annotations

from typing import Any

from common import Runner, timed_calls


def case_measure(p: dict[str, Any]) -> dict[str, Any]:
    """Best-of-k GFLOP/s of the matmul and of the conv (forward; forward + backward for context)."""
    import torch

    device, n, reps = p["device"], p["matmul_n"], p["reps"]

    def best(fn: Any) -> float:
        return float(timed_calls(fn, device, warmup=2, reps=reps)["seconds_min"])

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out: dict[str, Any] = {"matmul_n": n, "matmul_gflops": 2 * n**3 / best(lambda: torch.mm(a, b)) / 1e9}
    batch, ch, hw, _ = p["conv_shape"]
    flops = 2 * batch * ch * ch * 9 * hw * hw
    for fmt_name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
        conv = torch.nn.Conv2d(ch, ch, 3, padding=1).to(device, memory_format=fmt)
        x = torch.randn(batch, ch, hw, hw, device=device).contiguous(memory_format=fmt)
        with torch.no_grad():
            fwd_s = best(lambda conv=conv, x=x: conv(x))
        xg = x.clone().requires_grad_()
        grad = torch.randn(batch, ch, hw, hw, device=device).contiguous(memory_format=fmt)
        fb_s = best(lambda conv=conv, xg=xg, grad=grad: conv(xg).backward(grad))
        out[f"conv_{fmt_name}_gflops"] = flops / fwd_s / 1e9
        out[f"conv_{fmt_name}_fwd_bwd_gflops"] = 3 * flops / fb_s / 1e9
    out["conv_shape"] = [batch, ch, hw, hw]
    out["conv_gflops"] = max(out["conv_channels_last_gflops"], out["conv_contiguous_gflops"])
    out["conv_fwd_bwd_gflops"] = max(out["conv_channels_last_fwd_bwd_gflops"], out["conv_contiguous_fwd_bwd_gflops"])
    out["threads"] = torch.get_num_threads()
    return out


def section(run: Runner, sizes: dict[str, Any]) -> dict[str, Any] | None:
    params = {"matmul_n": sizes["matmul_n"], "conv_shape": sizes["conv_shape"], "reps": sizes["peak_reps"]}
    return run("peak.measure", "peak: matmul + 64-ch 3x3 conv", params)
