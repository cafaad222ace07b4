"""DRN: the primal network P (LR -> HR) and the dual regressors D_i (HR -> LR), as in Guo et al., CVPR 2020.

Module names mirror the authors' `model/drn.py` and `model/common.py`, so their released state_dicts load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from drn_lightning.options import OptionError, one_of

SUPPORTED_SCALES = (2, 4, 8)
MIN_FEATS = 4
# Per-channel RGB mean of DIV2K used by the authors' mean-shift convs (in units of the 0-255 range / 255).
RGB_MEAN = (0.4488, 0.4371, 0.4040)


def check_scale(scale: int) -> int:
    """Fail early with the allowed values: DRN needs a power-of-two scale with one dual per x2 step."""
    return int(one_of(scale, "scale", SUPPORTED_SCALES))


def num_stages(scale: int) -> int:
    """Number of x2 steps (down blocks, up stages and dual regressors) for a scale."""
    return int(math.log2(check_scale(scale)))


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """Same-size 3x3 convolution, the authors' `default_conv`."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class MeanShift(nn.Conv2d):
    """1x1 conv that subtracts (sign=-1) or adds back (sign=+1) the dataset mean; trainable as in the authors' code."""

    def __init__(self, rgb_range: float = 255.0, sign: int = -1) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            assert self.bias is not None
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))


class ChannelAttention(nn.Module):
    """RCAN's squeeze-and-excitation gate (the authors' `CALayer`): x * sigmoid(W_u relu(W_d mean(x)))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    """Residual channel-attention block: conv-ReLU-conv-CA plus identity."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels),
            nn.ReLU(inplace=True),
            conv3x3(channels, channels),
            ChannelAttention(channels, reduction),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        out += x  # the gate's product is a fresh tensor: adding in place saves one activation
        return out


class DownBlock(nn.Module):
    """Stride-2 conv + LeakyReLU then a 3x3 conv (no biases): the primal's x1/2 step and the dual regressor."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.dual_module = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(in_channels, mid_channels, 3, stride=2, padding=1, bias=False),
                nn.LeakyReLU(negative_slope, inplace=True),
            ),
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.dual_module(x)


def build_duals(scale: int, n_feats: int, n_colors: int = 3, negative_slope: float = 0.2) -> nn.ModuleList:
    """One dual regressor per x2 step (a DownBlock, 54 * n_feats weights): D_i maps output i+1 back to level i."""
    return nn.ModuleList(DownBlock(n_colors, n_feats, n_colors, negative_slope) for _ in range(num_stages(scale)))


class DRN(nn.Module):
    """Primal P: bicubic pre-upsampling, a U-Net of stride-2 down blocks and RCAB up stages; 0-255 in, levels out.

    `forward` returns log2(scale)+1 images coarse to fine (x4: LR size, 2x, 4x), each in 0-255, not clamped.
    """

    def __init__(
        self,
        scale: int = 4,
        n_feats: int = 16,
        n_blocks: int = 30,
        n_colors: int = 3,
        rgb_range: float = 255.0,
        negative_slope: float = 0.2,
        reduction: int = 16,
        init: str = "default",
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        one_of(init, "init", ("default", "identity"))  # default: PyTorch's, as the authors
        if n_feats < MIN_FEATS:
            raise OptionError("n_feats", n_feats, f"too small; DRN needs n_feats >= {MIN_FEATS}")
        if n_blocks < 1:
            raise OptionError("n_blocks", n_blocks, "must be >= 1")
        self.scale, self.n_feats, self.n_blocks = check_scale(scale), n_feats, n_blocks
        self.n_colors, self.negative_slope = n_colors, negative_slope
        # Recompute each RCAB in the backward instead of keeping its activations (big patches; no parameters).
        self.checkpoint_blocks = bool(checkpoint_blocks)
        stages = num_stages(scale)
        width = [n_feats * 2**p for p in range(stages + 1)]  # channels at each depth, shallow to deep

        self.upsample = nn.Upsample(scale_factor=scale, mode="bicubic", align_corners=False)
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = conv3x3(n_colors, n_feats)
        self.down = nn.ModuleList(DownBlock(width[p], width[p], width[p + 1], negative_slope) for p in range(stages))
        up_blocks = []
        for idx in range(stages):
            depth = stages - idx  # depth of the features entering this stage
            # After the first stage the input is the concatenation of upsampled and skip features.
            channels = width[depth] if idx == 0 else 2 * width[depth]
            up_blocks.append(
                nn.Sequential(
                    *(RCAB(channels, reduction) for _ in range(n_blocks)),
                    nn.Sequential(conv3x3(channels, 4 * channels), nn.PixelShuffle(2)),  # the authors' Upsampler
                    nn.Conv2d(channels, width[depth - 1], 1),
                )
            )
        self.up_blocks = nn.ModuleList(up_blocks)
        tail_channels = [width[stages]] + [2 * width[depth] for depth in range(stages - 1, -1, -1)]
        self.tail = nn.ModuleList(conv3x3(c, n_colors) for c in tail_channels)
        self.add_mean = MeanShift(rgb_range, sign=1)
        if init == "identity":
            self.init_identity_path()

    def build_duals(self) -> nn.ModuleList:
        """The dual regressors D_i that close this network's loop (their size follows n_feats)."""
        return build_duals(self.scale, self.n_feats, self.n_colors, self.negative_slope)

    @torch.no_grad()
    def init_identity_path(self) -> None:
        """Start the finest output at the bicubic input (head copies RGB, last tail reads it back) for short runs."""
        colors = self.head.in_channels
        head_weight, head_bias = self.head.weight, self.head.bias
        tail_weight, tail_bias = self.tail[-1].weight, self.tail[-1].bias
        assert head_bias is not None and isinstance(tail_weight, Tensor) and isinstance(tail_bias, Tensor)
        head_weight[:colors].zero_()
        head_bias[:colors].zero_()
        tail_weight.zero_()
        tail_bias.zero_()
        for c in range(colors):
            head_weight[c, c, 1, 1] = 1.0
            tail_weight[c, self.n_feats + c, 1, 1] = 1.0

    def forward(self, lr: Tensor) -> list[Tensor]:
        x = self.head(self.sub_mean(self.upsample(lr)))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        outputs = [self.add_mean(self.tail[0](x))]
        for idx, up in enumerate(self.up_blocks):
            x = torch.cat((self._up_stage(up, x), skips[-1 - idx]), dim=1)
            outputs.append(self.add_mean(self.tail[idx + 1](x)))
        return outputs

    def _up_stage(self, up: nn.Module, x: Tensor) -> Tensor:
        if not (self.checkpoint_blocks and self.training and torch.is_grad_enabled()):
            return up(x)
        for module in up.children():
            x = checkpoint(module, x, use_reentrant=False) if isinstance(module, RCAB) else module(x)
        return x
