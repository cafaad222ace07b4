"""Colour helpers for SR evaluation: BT.601 luma as in MATLAB ``rgb2ycbcr``, and 8-bit quantisation."""

from __future__ import annotations

import torch
from torch import Tensor

_Y_OFFSET = 16.0
_Y_COEFFS = (65.481, 128.553, 24.966)  # ITU-R BT.601 for RGB in [0, 1], Y in [16, 235]


def rgb_to_y(image: Tensor, round_y: bool = False) -> Tensor:
    """BT.601 Y of 0-255 RGB ``(..., 3, H, W)`` -> ``(..., 1, H, W)``; ``round_y`` rounds as MATLAB does on uint8."""
    if image.dim() < 3 or image.shape[-3] != 3:
        raise ValueError(f"image must have shape (..., 3, H, W) RGB, got {tuple(image.shape)}")
    x = image if image.is_floating_point() else image.to(torch.float32)
    r, g, b = x[..., 0:1, :, :], x[..., 1:2, :, :], x[..., 2:3, :, :]
    # MATLAB's operation order (T/255 first, offset last), so exact .5 ties (RGB 198,108,43 -> 125.5) round alike.
    c0, c1, c2 = (c / 255.0 for c in _Y_COEFFS)
    y = c0 * r + c1 * g + c2 * b + _Y_OFFSET
    if round_y:
        y = torch.floor(y + 0.5)  # Y >= 16, so this is MATLAB's round-half-away-from-zero
    return y


def quantize(image: Tensor) -> Tensor:
    """Clamp to 0..255 and round like a uint8 cast, staying float, so SR is scored as saved to PNG."""
    if not image.is_floating_point():
        raise TypeError(f"quantize expects a floating tensor in 0..255, got {image.dtype}")
    return torch.floor(image.clamp(0.0, 255.0) + 0.5)
