"""Export a DRN primal to ONNX or TorchScript, checked at two sizes other than the trace's: tracers can bake one in."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from drn_lightning.options import first_line

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
DEFAULT_TOLERANCE = 1e-4  # max |exported - eager| on a 0-1 intensity scale: 0.0255 gray levels of 255
_EXAMPLE = (1, 24, 20)  # (N, H, W) of the trace
_VERIFY_SIZES = ((1, 17, 33), (2, 30, 23))  # checked: odd, non-square, another batch


class ExportError(RuntimeError):
    """An export that failed or whose output does not match eager PyTorch; names the file."""


class FinalOutput(nn.Module):
    """Wrap a DRN so the exported graph returns only the final x`scale` image, not the coarse levels."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, lr: Tensor) -> Tensor:
        out = self.model(lr)
        return out[-1] if isinstance(out, (list, tuple)) else out


@dataclass(frozen=True)
class ExportReport:
    """Where the model went and how far the exported outputs were from eager at each checked size."""

    path: Path
    format: str
    opset: int | None
    max_abs_diff: dict[tuple[int, int, int], float]  # (N, H, W) -> max |diff| on a 0-1 scale
    verified: bool

    @property
    def worst(self) -> float:
        """Largest difference over all checked sizes (0-1 scale); nan when not verified."""
        return max(self.max_abs_diff.values()) if self.max_abs_diff else float("nan")


def _example(n: int, h: int, w: int, seed: int) -> Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255.0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and deprecation chatter; errors still propagate."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_onnx(wrapper: nn.Module, path: Path, opset: int) -> Callable[[Tensor], Tensor] | None:
    """An onnxruntime runner, None without it; opset < 18 is TorchScript-based (`torch.export` cannot reach 17 here)."""
    common: dict[str, Any] = {"opset_version": opset, "input_names": ["lr"], "output_names": ["sr"]}
    if opset < 18:
        axes = {"lr": {0: "batch", 2: "height", 3: "width"}, "sr": {0: "batch", 2: "out_height", 3: "out_width"}}
        dynamic: dict[str, Any] = {"dynamo": False, "dynamic_axes": axes}
    else:
        shapes = {"lr": {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}}
        dynamic = {"dynamo": True, "dynamic_shapes": shapes, "verbose": False}
    with _quiet():
        torch.onnx.export(wrapper, (_example(*_EXAMPLE, seed=0),), str(path), **common, **dynamic)
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(np.asarray(session.run(None, {name: x.numpy()})[0]))


def _export_torchscript(wrapper: nn.Module, path: Path) -> Callable[[Tensor], Tensor]:
    """Traced, as `torch.jit.script` rejects DRN's integer `scale_factor`; the reloaded trace is the runner."""
    with _quiet(), torch.inference_mode():
        traced = torch.jit.trace(wrapper, (_example(*_EXAMPLE, seed=0),), check_trace=False)
    torch.jit.save(traced, str(path))
    return torch.jit.load(str(path), map_location="cpu")


def verify_export(
    wrapper: nn.Module, run: Callable[[Tensor], Tensor], sizes: tuple[tuple[int, int, int], ...] = _VERIFY_SIZES
) -> dict[tuple[int, int, int], float]:
    """Max |exported - eager| / 255 at each (N, H, W), so a size-specialised export is caught."""
    diffs = {}
    for i, (n, h, w) in enumerate(sizes):
        x = _example(n, h, w, seed=1 + i)
        with torch.inference_mode():
            ref, out = wrapper(x), run(x.clone())
        same_shape = tuple(out.shape) == tuple(ref.shape)
        diffs[(n, h, w)] = float((out.float() - ref.float()).abs().max()) / 255.0 if same_shape else float("inf")
    return diffs


def export_model(
    primal: nn.Module,
    path: str | os.PathLike[str],
    format: str = "onnx",
    opset: int = 17,
    *,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportReport:
    """Write the final image with dynamic N/H/W and check it against eager (ONNX without onnxruntime goes unchecked)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format={format!r} (--format) is unknown; choose one of {list(EXPORT_FORMATS)}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"{path}: output folder {path.parent} does not exist (-o)")
    wrapper = FinalOutput(primal.to("cpu")).eval()
    try:
        run = _export_onnx(wrapper, path, opset) if format == "onnx" else _export_torchscript(wrapper, path)
    except (OSError, RuntimeError, ValueError, TypeError) as err:
        raise ExportError(f"{path}: {format} export failed ({type(err).__name__}: {first_line(err)[:300]})") from err
    diffs = verify_export(wrapper, run) if verify and run is not None else {}
    bad = {size: d for size, d in diffs.items() if not d <= tolerance}
    if bad:
        raise ExportError(
            f"{path}: exported {format} model differs from eager PyTorch by more than {tolerance:g} "
            f"(0-1 scale) at (N, H, W) sizes {bad}; the export is not size-independent"
        )
    return ExportReport(path, format, opset if format == "onnx" else None, diffs, verified=bool(diffs))
