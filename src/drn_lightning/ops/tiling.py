"""Tiled and self-ensembled inference as pure tensor functions, independent of any model class.

`tiled_forward` bounds memory by running the network on overlapping LR tiles and keeping only each
tile's centre. DRN bicubic-upsamples its input first, so any LR tile size is valid; the overlap gives
every kept pixel the context the bicubic kernel and the convolutions would have had in the whole image.
Global pooling (DRN's channel attention) still sees only one tile: `drn_lightning.tile_stats.SharedChannelStats`
hooks those layers so a later pass uses the image-wide statistics (`drn_lightning.inference` runs the passes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from drn_lightning.checks import integer

__all__ = [
    "DEFAULT_TILE_OVERLAP",
    "TileBox",
    "self_ensemble_forward",
    "tile_boxes",
    "tiled_forward",
]

# LR pixels of context on each side of a tile; chosen by measurement (docs/inference.md, "Tiling").
DEFAULT_TILE_OVERLAP = 8

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


def _split(length: int, tile: int) -> list[int]:
    """Near-equal cores of at most `tile` px, so no thin last tile wastes a whole model call on context."""
    count = math.ceil(length / tile)
    return [(i * length) // count for i in range(count + 1)]


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[TileBox]:
    """Row-major tiles covering an LR image; cores partition it exactly, crops add `overlap` px clipped at the edges."""
    integer(tile, "tile", 1)
    integer(overlap, "overlap", 0)
    rows, cols = _split(height, tile), _split(width, tile)
    boxes = []
    for y0, y1 in itertools.pairwise(rows):
        for x0, x1 in itertools.pairwise(cols):
            boxes.append(
                TileBox(
                    y0,
                    y1,
                    x0,
                    x1,
                    max(0, y0 - overlap),
                    min(height, y1 + overlap),
                    max(0, x0 - overlap),
                    min(width, x1 + overlap),
                )
            )
    return boxes


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
    """Run `fn` (LR (N,C,h,w) -> SR (N,C',h*scale,w*scale)) tile by tile and stitch the tile centres.

    Peak memory is one tile's activations plus the output buffer, which is allocated once. A `tile`
    of None, or one covering the whole image, calls `fn` once on the whole image. `on_tile` is told
    each tile before `fn` runs on it (used to share global statistics across tiles). With `out` (a
    preallocated (N, C'', H*scale, W*scale) tensor of any dtype and strides, e.g. a uint8 view of an
    HxWx3 array) each tile's centre is passed through `convert` and written there, so no float copy of
    the whole output is ever held; `out` is returned.
    """
    if lr.dim() != 4:
        raise ValueError(f"lr must have shape (N, C, H, W), got {tuple(lr.shape)}")
    scale = integer(scale, "scale", 1)
    height, width = int(lr.shape[-2]), int(lr.shape[-1])
    if tile is None or (tile >= height and tile >= width):
        if tile is not None:
            integer(tile, "tile", 1)
        if out is None:
            if on_tile is not None:
                on_tile(TileBox(0, height, 0, width, 0, height, 0, width))
            return fn(lr)
        tile = max(height, width)  # one tile, written into `out` like any other
    for box in tile_boxes(height, width, tile, overlap):
        if on_tile is not None:
            on_tile(box)
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
        out[..., box.y0 * scale : box.y1 * scale, box.x0 * scale : box.x1 * scale] = (
            core if convert is None else convert(core)
        )
        del sr, core  # free this tile's output before the next tile's activations are allocated
    assert out is not None  # at least one tile exists because height, width >= 1
    return out


_DIHEDRAL = [(t, fh, fw) for t in (False, True) for fh in (False, True) for fw in (False, True)]


def _apply(x: Tensor, transpose: bool, flip_h: bool, flip_w: bool) -> Tensor:
    if transpose:
        x = x.transpose(-2, -1)
    dims = [d for d, on in ((-2, flip_h), (-1, flip_w)) if on]
    return x.flip(dims) if dims else x


def _invert(x: Tensor, transpose: bool, flip_h: bool, flip_w: bool) -> Tensor:
    dims = [d for d, on in ((-2, flip_h), (-1, flip_w)) if on]
    if dims:
        x = x.flip(dims)
    return x.transpose(-2, -1) if transpose else x


def self_ensemble_forward(fn: TensorFn, lr: Tensor) -> Tensor:
    """Average `fn` over the 8 flips/transposes of the input, each mapped back (EDSR's "+"), for a small PSNR gain."""
    if lr.dim() != 4:
        raise ValueError(f"lr must have shape (N, C, H, W), got {tuple(lr.shape)}")
    total: Tensor | None = None
    for t, fh, fw in _DIHEDRAL:
        sr = _invert(fn(_apply(lr, t, fh, fw).contiguous()), t, fh, fw)
        # Accumulate in float32 at least, so half-precision outputs do not lose the average's low bits.
        sr = sr.float() if sr.dtype in (torch.float16, torch.bfloat16) else sr
        total = sr.clone() if total is None else total.add_(sr)
    assert total is not None
    return total.div_(len(_DIHEDRAL))
