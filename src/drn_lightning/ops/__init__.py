"""Pure tensor ops: MATLAB-compatible resizing, HR->LR degradations, colour conversion."""

from __future__ import annotations

from drn_lightning.ops.color import quantize, rgb_to_y
from drn_lightning.ops.degrade import (
    DEGRADATIONS,
    bd_downsample,
    bicubic_downsample,
    lr_pyramid,
    nearest_downsample,
)
from drn_lightning.ops.imresize import cubic, imresize, imresize_output_size, resize_weights

__all__ = [
    "DEGRADATIONS",
    "bd_downsample",
    "bicubic_downsample",
    "cubic",
    "imresize",
    "imresize_output_size",
    "lr_pyramid",
    "nearest_downsample",
    "quantize",
    "resize_weights",
    "rgb_to_y",
]
