"""HR -> LR degradations (MATLAB conventions, float 0-255 or uint8 in -> same out) for SR training and test pairs."""

from __future__ import annotations

from collections.abc import Callable

import kornia
import torch
from torch import Tensor

from drn_lightning.ops.imresize import imresize


def _check_scale(scale: int) -> int:
    """Degradations are defined for integer factors only; reject anything else loudly."""
    if isinstance(scale, bool) or int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def bicubic_downsample(hr: Tensor, scale: int) -> Tensor:
    """BI degradation: MATLAB bicubic ``imresize`` by ``1/scale`` with antialiasing, as DIV2K and Set5/Set14 made."""
    return imresize(hr, scale=1.0 / _check_scale(scale))


def nearest_downsample(hr: Tensor, scale: int) -> Tensor:
    """MATLAB ``imresize(hr, 1/scale, 'nearest')``: keep pixel ``floor((i + 0.5) * scale)`` per block."""
    return imresize(hr, scale=1.0 / _check_scale(scale), method="nearest", antialias=False)


def bd_downsample(hr: Tensor, scale: int, kernel_size: int = 7, sigma: float = 1.6) -> Tensor:
    """BD degradation (RDN's ``imresize_BD``): Gaussian blur with replicate borders, then MATLAB nearest pick."""
    scale = _check_scale(scale)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if hr.dim() < 3:
        raise ValueError(f"hr must have shape (..., C, H, W), got {tuple(hr.shape)}")
    is_uint8 = hr.dtype == torch.uint8
    work = hr.to(torch.float64) if is_uint8 else hr
    lead = work.shape[:-3]
    flat = work.reshape(-1, *work.shape[-3:])
    blurred = kornia.filters.gaussian_blur2d(
        flat, (kernel_size, kernel_size), (float(sigma), float(sigma)), border_type="replicate"
    ).reshape(*lead, *work.shape[-3:])
    if is_uint8:  # rounded to uint8 first, as MATLAB's imfilter returns uint8
        blurred = torch.floor(blurred + 0.5).clamp_(0.0, 255.0).to(torch.uint8)
    return nearest_downsample(blurred, scale)


DEGRADATIONS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "bicubic": bicubic_downsample,
    "bd": bd_downsample,
    "nearest": nearest_downsample,
}


def lr_pyramid(hr: Tensor, scale: int, method: str = "bicubic") -> list[Tensor]:
    """DRN's LR inputs, coarse to fine (x4 -> [hr/4, hr/2]), each from the HR as DIV2K's X2 and X4 folders are."""
    if method not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {method!r}; allowed: {sorted(DEGRADATIONS)}")
    scale = _check_scale(scale)
    if scale < 2 or scale & (scale - 1):
        raise ValueError(f"scale must be a power of two >= 2 for DRN's x2 pyramid, got {scale!r}")
    return [DEGRADATIONS[method](hr, scale >> k) for k in range(scale.bit_length() - 1)]
