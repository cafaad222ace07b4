"""Tiled and self-ensembled inference for any model; DRN upsamples first, so tiles of any LR size are valid."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from drn_lightning.options import integer

DEFAULT_TILE_OVERLAP = 8  # LR pixels of context on each side of a tile; measured (docs/inference.md, "Tiling")

TensorFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class TileBox:
    """One tile in LR pixels: the kept core [y0, y1) x [x0, x1) inside the crop [cy0, cy1) x [cx0, cx1) fed to the model."""

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    @property
    def crop_size(self) -> tuple[int, int]:
        """(height, width) of the crop the model sees, so hooks can map feature maps back to LR pixels."""
        return self.cy1 - self.cy0, self.cx1 - self.cx0

    @property
    def core_in_crop(self) -> tuple[int, int, int, int]:
        """Core rows/cols relative to the crop (top, bottom, left, right), in LR pixels."""
        return self.y0 - self.cy0, self.y1 - self.cy0, self.x0 - self.cx0, self.x1 - self.cx0


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Near-equal cores (start, stop) of at most `tile` px, so no thin last tile wastes a model call, with their crops."""
    count = math.ceil(length / tile)
    edges = [(i * length) // count for i in range(count + 1)]
    return [(a, b, max(0, a - overlap), min(length, b + overlap)) for a, b in itertools.pairwise(edges)]


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[TileBox]:
    """Row-major tiles covering an LR image; cores partition it exactly, crops add `overlap` px clipped at the edges."""
    integer(tile, "tile", 1)
    integer(overlap, "overlap", 0)
    return [
        TileBox(y0, y1, x0, x1, cy0, cy1, cx0, cx1)
        for y0, y1, cy0, cy1 in _spans(height, tile, overlap)
        for x0, x1, cx0, cx1 in _spans(width, tile, overlap)
    ]


def tiled_forward(
    fn: TensorFn,
    lr: Tensor,
    scale: int,
    tile: int | None,
    overlap: int = DEFAULT_TILE_OVERLAP,
    *,
    on_tile: Callable[[TileBox], None] | None = None,
    out: Tensor | None = None,
    convert: TensorFn | None = None,
) -> Tensor:
    """Run `fn` (LR -> SR x`scale`) per tile, stitching cores via `convert` into `out` (any dtype: no float copy)."""
    if lr.dim() != 4:
        raise ValueError(f"lr must have shape (N, C, H, W), got {tuple(lr.shape)}")
    scale = integer(scale, "scale", 1)
    height, width = int(lr.shape[-2]), int(lr.shape[-1])
    boxes = tile_boxes(height, width, max(height, width) if tile is None else tile, overlap)
    for box in boxes:
        if on_tile is not None:
            on_tile(box)
        if out is None and len(boxes) == 1:
            return fn(lr)
        sr = fn(lr[..., box.cy0 : box.cy1, box.cx0 : box.cx1])
        crop_h, crop_w = box.crop_size
        if sr.dim() != 4 or sr.shape[0] != lr.shape[0] or tuple(sr.shape[-2:]) != (crop_h * scale, crop_w * scale):
            raise ValueError(
                f"fn mapped a tile of shape {(*tuple(lr.shape[:2]), crop_h, crop_w)} to {tuple(sr.shape)}; "
                f"expected (N, C, {crop_h * scale}, {crop_w * scale}) for scale={scale}"
            )
        if out is None:
            out = sr.new_empty((sr.shape[0], sr.shape[1], height * scale, width * scale))
        top, bottom, left, right = box.core_in_crop
        core = sr[..., top * scale : bottom * scale, left * scale : right * scale]
        core = core if convert is None else convert(core)
        out[..., box.y0 * scale : box.y1 * scale, box.x0 * scale : box.x1 * scale] = core
        del sr, core  # free this tile's output before the next tile's activations are allocated
    assert out is not None  # at least one tile exists because height, width >= 1
    return out


def self_ensemble_forward(fn: TensorFn, lr: Tensor) -> Tensor:
    """Average `fn` over the 8 flips/transposes of the input, each mapped back (EDSR's "+"), for a small PSNR gain."""
    if lr.dim() != 4:
        raise ValueError(f"lr must have shape (N, C, H, W), got {tuple(lr.shape)}")
    total: Tensor | None = None
    for transpose, flips in itertools.product((False, True), ([], [-1], [-2], [-2, -1])):
        x = lr.transpose(-2, -1) if transpose else lr
        sr = fn((x.flip(flips) if flips else x).contiguous())
        sr = sr.flip(flips) if flips else sr  # undo the flips before the transpose: each is its own inverse
        sr = sr.transpose(-2, -1) if transpose else sr
        sr = sr.float() if sr.dtype in (torch.float16, torch.bfloat16) else sr  # keeps the average's low bits
        total = sr.clone() if total is None else total.add_(sr)
    assert total is not None
    return total.div_(8)
