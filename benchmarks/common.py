"""What the benchmark cases share: device facts, timing, RSS, our Hydra config, and the fresh-process runner.

Light on purpose (no torch at import): `peak_rss.py` and every case process import it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _path in (REPO / "src", BENCH_DIR):  # a checkout without installing; the cases import `common`, `peak_rss`
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


# ----------------------------------------------------------------------------------------------- device facts


def cpu_model() -> str:
    """CPU model as /proc/cpuinfo gives it, with family/model numbers (hypervisors often hide the SKU)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name", platform.processor() or platform.machine())
    extra = [f"family {info['cpu family']} model {info['model']}"] if "cpu family" in info and "model" in info else []
    extra.append(f"{os.cpu_count()} logical CPUs")
    return f"{name} ({', '.join(extra)})"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def cpu_has_amx_bf16() -> bool:
    """True on CPUs with AMX bf16 tiles (Intel Sapphire Rapids and later), where oneDNN's bf16 convolutions run
    several times faster than fp32; elsewhere CPU bf16 is slower than fp32."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split(":", 1)[1].split() for line in lines)


def mixed_precision_overrides(device: str) -> list[str] | None:
    """Our fast mixed-precision recipe for the device, or None where bf16 is not fast (CPUs without AMX)."""
    if device.startswith("cuda"):
        return ["trainer.precision=bf16-mixed", "compile=true"]
    if cpu_has_amx_bf16():
        # Eager: torch.compile took ~70 s per process to gain ~12 % here (0.66 vs 0.74 s per DRN-S x4 step).
        return ["trainer.precision=bf16-mixed"]
    return None


# ----------------------------------------------------------------------------------------------- timing and memory


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed_calls(fn: Callable[[], Any], device: str, warmup: int, reps: int) -> dict[str, Any]:
    """Median and best seconds of `reps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "seconds_min": min(times), "seconds_all": times}


def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux: VmHWM, since ru_maxrss survives exec and would report the parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if os.uname().sysname == "Darwin" else 1024)  # bytes on macOS, KiB on Linux


def current_rss_bytes() -> int:
    """Resident set size now, from /proc (Linux); the peak so far elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_mb() -> float:
    return peak_rss_bytes() / 2**20


# ----------------------------------------------------------------------------------------------- our config and networks


def compose_train_config(overrides: list[str], output_dir: str, cache_dir: str) -> Any:
    """Our Hydra config (conf/train.yaml), composed in-process as `python -m drn_lightning.train` would."""
    from hydra import compose, initialize_config_dir

    conf_dir = REPO / "conf"
    if not conf_dir.is_dir():
        import drn_lightning

        conf_dir = Path(drn_lightning.__file__).parent / "conf"
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(
            "train", overrides=[f"paths.output_dir={output_dir}", f"paths.cache_dir={cache_dir}", *overrides]
        )


def make_networks(variant: str, scale: int, seed: int = 0) -> tuple[Any, Any]:
    """Primal + duals with seeded weights: every case that compares numerics builds exactly these."""
    import torch

    from drn_lightning.models import build_drn

    torch.manual_seed(seed)
    return build_drn(variant, scale, dual=True)


# ----------------------------------------------------------------------------------------------- parent side


class Runner:
    """Runs one case in a fresh Python process (`bench.py --case MODULE.NAME`) and returns its JSON result, or
    None when it failed; `log` records each case's wall time, 1-minute load before/after and any error."""

    def __init__(self, device: str, threads: int | None, timeout: float, workdir: Path) -> None:
        self.device, self.threads, self.timeout, self.workdir = device, threads, timeout, workdir
        self.log: list[dict[str, Any]] = []
        self.count = itertools.count(1)  # thread-safe: --quick runs two lanes of cases at once

    def __call__(self, case: str, label: str, params: dict[str, Any]) -> dict[str, Any] | None:
        n = next(self.count)
        params_path, result_path = self.workdir / f"case{n}_params.json", self.workdir / f"case{n}_result.json"
        params_path.write_text(json.dumps({"device": self.device, "threads": self.threads, **params}))
        load_before = os.getloadavg()[0]
        print(f"[bench] {label} ... (1-min load {load_before:.2f})", flush=True)
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(BENCH_DIR / "bench.py"), "--case", case, "--params", str(params_path),
             "--result", str(result_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"},
            timeout=self.timeout,
        )  # fmt: skip
        wall, load_after = time.perf_counter() - started, os.getloadavg()[0]
        entry: dict[str, Any] = {"case": label, "wall_s": wall, "load_before": load_before, "load_after": load_after}
        self.log.append(entry)
        if proc.returncode != 0 or not result_path.exists():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-15:]
            entry["error"] = f"exit code {proc.returncode}: " + " | ".join(tail)
            print(f"[bench]   FAILED {label}: {entry['error']}", flush=True)
            return None
        result = json.loads(result_path.read_text())
        result["load_avg_1min"] = [load_before, load_after]
        print(f"[bench]   done in {wall:.1f} s", flush=True)
        return result


def best_round(results: list[dict[str, Any] | None], key: str) -> dict[str, Any] | None:
    """The fastest of several rounds of one case (noise on a shared machine only ever adds time)."""
    done = [r for r in results if r]
    if not done:
        return None
    best = dict(min(done, key=lambda r: r[key]))
    best["rounds"] = [r[key] for r in done]
    return best


def round_tag(r: int, rounds: int) -> str:
    return f" (round {r + 1}/{rounds})" if rounds > 1 else ""


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0 or not math.isfinite(num) or not math.isfinite(den):
        return None
    return num / den


def fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def make_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Any:
    """A rich table, the first column left-aligned, the others right-aligned."""
    from rich.table import Table

    out = Table(title=title)
    for i, col in enumerate(columns):
        out.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*row)
    return out
