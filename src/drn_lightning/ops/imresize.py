"""MATLAB-exact ``imresize`` for tensors: SR benchmarks are made with it, and other resamplers shift PSNR."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Method = Literal["bicubic", "nearest"]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, the kernel MATLAB's ``imresize`` uses."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


def _box(x: np.ndarray) -> np.ndarray:
    """MATLAB's half-open box kernel, so 'nearest' picks exactly one source pixel."""
    x = np.asarray(x, dtype=np.float64)
    return ((x >= -0.5) & (x < 0.5)).astype(np.float64)


_KERNELS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bicubic": (cubic, 4.0),
    "nearest": (_box, 1.0),
}


@lru_cache(maxsize=256)
def _contributions(
    in_len: int, out_len: int, scale: float, method: str, antialias: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 weights and 0-based source indices, both (out_len, P), as MATLAB's contributions()."""
    kernel, width = _KERNELS[method]
    stretch = scale if scale < 1.0 and antialias else 1.0  # widened by 1/scale, shrinking low-pass filters
    width = width / stretch
    out_pos = np.arange(1, out_len + 1, dtype=np.float64)
    center = out_pos / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based source coordinate
    left = np.floor(center - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = stretch * kernel(stretch * (center[:, None] - idx))
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])  # symmetric: 2 1 | 1 2 .. n | n n-1
    idx0 = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0.0, axis=0)
    return weights[:, keep], idx0[:, keep]


def resize_weights(
    in_len: int, out_len: int, scale: float, method: Method = "bicubic", antialias: bool = True
) -> np.ndarray:
    """Dense float64 ``(out_len, in_len)`` resampling matrix of one MATLAB imresize pass."""
    weights, idx = _contributions(in_len, out_len, float(scale), method, antialias)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.repeat(np.arange(out_len), idx.shape[1])
    np.add.at(mat, (rows, idx.ravel()), weights.ravel())  # mirrored taps can hit one pixel twice
    return mat


@lru_cache(maxsize=64)
def _weight_tensor(
    in_len: int, out_len: int, scale: float, method: str, antialias: bool, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Cache the matrix on the target device/dtype so repeated resizes pay only the matmul."""
    mat = resize_weights(in_len, out_len, scale, method, antialias)  # type: ignore[arg-type]
    return torch.from_numpy(mat).to(device=device, dtype=dtype)


def imresize_output_size(in_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size rule ``ceil(in * scale)``, evaluated in double precision like MATLAB."""
    return (math.ceil(in_size[0] * scale), math.ceil(in_size[1] * scale))


def _output_geometry(
    in_h: int, in_w: int, scale: float | None, size: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Output size and per-axis scale from exactly one of `scale` or `size`, as MATLAB derives them."""
    if (scale is None) == (size is None):
        raise ValueError(f"give exactly one of scale or size, got scale={scale!r}, size={size!r}")
    if scale is not None:
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite positive number, got {scale!r}")
        return imresize_output_size((in_h, in_w), float(scale)), (float(scale), float(scale))
    assert size is not None
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"size must be two positive integers (H, W), got {size!r}")
    return (int(size[0]), int(size[1])), (size[0] / in_h, size[1] / in_w)


def imresize(
    image: Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
    method: Method = "bicubic",
) -> Tensor:
    """MATLAB's ``imresize`` of ``(..., H, W)`` by ``scale`` or to ``size``; dtype kept (uint8 rounded per pass)."""
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() < 2:
        raise ValueError(f"image must have shape (..., H, W), got {tuple(image.shape)}")
    if method not in _KERNELS:
        raise ValueError(f"unknown method {method!r}; allowed: {sorted(_KERNELS)}")
    is_uint8 = image.dtype == torch.uint8
    if not (is_uint8 or image.is_floating_point()):
        raise TypeError(f"image dtype must be uint8 or floating point, got {image.dtype}")
    in_h, in_w = int(image.shape[-2]), int(image.shape[-1])
    if in_h < 1 or in_w < 1:
        raise ValueError(f"image must be non-empty, got shape {tuple(image.shape)}")
    (out_h, out_w), (scale_h, scale_w) = _output_geometry(in_h, in_w, scale, size)
    # uint8 in float64, so ties round where MATLAB's doubles put them; half precision in float32, cast back
    half = image.dtype in (torch.float16, torch.bfloat16)
    work_dtype = torch.float64 if is_uint8 else torch.float32 if half else image.dtype
    out = image.to(work_dtype)
    for dim in ("h", "w") if scale_h <= scale_w else ("w", "h"):  # as MATLAB: the smaller scale first, rows on ties
        if dim == "h":
            mat = _weight_tensor(in_h, out_h, scale_h, method, antialias, out.device, work_dtype)
            out = torch.matmul(mat, out)
        else:
            mat = _weight_tensor(in_w, out_w, scale_w, method, antialias, out.device, work_dtype)
            out = torch.matmul(out, mat.T)
        if is_uint8:  # as MATLAB's imresizemex returns uint8 after each pass: round half away from zero, saturate
            out = torch.floor(out + 0.5).clamp_(0.0, 255.0)
    return out.to(image.dtype)
