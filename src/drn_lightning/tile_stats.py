"""Channel-attention statistics shared across tiles: DRN's RCAB gates average over the whole image, so a tile that
saw only itself would gate differently; this hooks those layers for a second pass (run by `drn_lightning.inference`).
Kept out of `ops/`, whose functions know nothing of the network."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from drn_lightning.models.drn import ChannelAttention
from drn_lightning.ops.tiling import TileBox

__all__ = ["SharedChannelStats"]


class SharedChannelStats:
    """Share channel-attention means across tiles so a tile's RCAB gates match the whole image's.

    While active, every `ChannelAttention` input is summed over the tile's kept core (the cores
    partition the image, so the sums add up to the image-wide sum). After `end_pass`, later
    passes gate with those image-wide means instead of the tile's own mean.
    """

    def __init__(self, model: nn.Module, height: int, width: int) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, ChannelAttention)]
        self.height, self.width = height, width
        self.box: TileBox | None = None
        self._sums: dict[int, Tensor] = {}
        self._ratios: dict[int, int] = {}
        self._means: dict[int, Tensor] | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> SharedChannelStats:
        self._handles = [m.register_forward_hook(partial(self._hook, i)) for i, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_tile(self, box: TileBox) -> None:
        """Remember which LR region the next model call covers (passed to `tiled_forward`)."""
        self.box = box

    def start_pass(self) -> None:
        """Reset the sums collected by the previous pass."""
        self._sums, self._ratios = {}, {}

    def end_pass(self) -> None:
        """Turn this pass's summed cores into image-wide means for the next pass."""
        means = {}
        for idx, total in self._sums.items():
            ratio = self._ratios[idx]
            means[idx] = (total / (self.height * ratio * self.width * ratio)).float()[..., None, None]
        self._means = means

    def _hook(self, idx: int, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        assert self.box is not None, "SharedChannelStats.on_tile must be called before each tile"
        x = args[0]
        crop_h, crop_w = self.box.crop_size
        ratio = x.shape[-2] // crop_h
        if ratio < 1 or x.shape[-2] != crop_h * ratio or x.shape[-1] != crop_w * ratio:
            raise RuntimeError(
                f"channel-attention input {tuple(x.shape)} is not an integer multiple of the LR tile {crop_h}x{crop_w}"
            )
        top, bottom, left, right = self.box.core_in_crop
        core = x[..., top * ratio : bottom * ratio, left * ratio : right * ratio]
        part = core.sum(dim=(2, 3), dtype=torch.float64)
        self._sums[idx] = part if idx not in self._sums else self._sums[idx] + part
        self._ratios[idx] = ratio
        if self._means is None:
            return None
        gate = module.conv_du(self._means[idx].to(device=x.device, dtype=x.dtype))  # type: ignore[operator]
        return x * gate


# The 8 elements of the dihedral group of the square as (transpose, flip H, flip W); each is its own
# inverse except transposition order, handled by undoing flips before the transpose.
