"""DRN: the primal network P (LR -> HR) and the dual regressors D_i (HR -> LR), as in Guo et al., CVPR 2020.

Module names and nesting mirror the authors' code exactly, so their released state_dicts load unchanged
(`head.weight`, `down.0.dual_module.0.0.weight`, `up_blocks.0.3.body.3.conv_du.0.weight`, `tail.2.weight`, ...).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

SUPPORTED_SCALES = (2, 4, 8)
MIN_FEATS = 4
# Per-channel RGB mean of DIV2K used by the authors' mean-shift convs (in units of the 0-255 range / 255).
RGB_MEAN = (0.4488, 0.4371, 0.4040)


def check_scale(scale: int) -> int:
    """Fail early with the allowed values: DRN needs a power-of-two scale with one dual per x2 step."""
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"scale={scale!r} is not supported; DRN allows scale in {list(SUPPORTED_SCALES)}")
    return int(scale)


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
            self.bias.copy_(sign * rgb_range * torch.tensor(RGB_MEAN))


def _spatial_mean(x: Tensor, keepdim: bool = False) -> Tensor:
    """Mean over H and W. For bf16 through a native sum (the kernel accumulates in float32): `mean` on a CPU bf16
    tensor first copies the whole activation to float32, 5x slower. fp16 keeps `mean` (a native sum could overflow)."""
    if x.dtype != torch.bfloat16:
        return x.mean(dim=(2, 3), keepdim=keepdim)
    return x.sum(dim=(2, 3), keepdim=keepdim) * (1.0 / (x.shape[2] * x.shape[3]))


def _spatial_sum(x: Tensor) -> Tensor:
    """(N, C) sums over H and W in at least float32, without a float32 copy of a bf16 input (see `_spatial_mean`)."""
    if x.dtype == torch.bfloat16:
        return x.sum(dim=(2, 3)).float()
    return x.sum(dim=(2, 3), dtype=torch.promote_types(x.dtype, torch.float32))


def _attention_backward(
    grad_gate: Tensor, pooled: Tensor, hidden: Tensor, gate: Tensor, wd: Tensor, wu: Tensor, pixels: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of `gate = sigmoid(wu . relu(wd . pooled + bd) + bu)` on (N, C) vectors, in at least float32
    (under autocast the gate is bf16/fp16).

    Returns the gradient reaching each pixel through the spatial mean (`d pooled / pixels`) and the gradients of
    wd, bd, wu, bu in the weights' dtypes.
    """
    f32 = torch.promote_types(gate.dtype, torch.float32)
    n, c = grad_gate.shape
    gate, hidden, pooled = gate.reshape(n, c).to(f32), hidden.reshape(n, -1).to(f32), pooled.reshape(n, c).to(f32)
    grad_z2 = grad_gate.to(f32) * gate * (1 - gate)  # through the sigmoid
    grad_wu = (grad_z2.t() @ hidden).view(wu.shape).to(wu.dtype)
    grad_z1 = (grad_z2 @ wu.flatten(1).to(f32)) * (hidden > 0)  # through the ReLU
    grad_wd = (grad_z1.t() @ pooled).view(wd.shape).to(wd.dtype)
    grad_pooled = (grad_z1 @ wd.flatten(1).to(f32)) * (1.0 / pixels)
    return grad_pooled, grad_wd, grad_z1.sum(0).to(wd.dtype), grad_wu, grad_z2.sum(0).to(wu.dtype)


class _ChannelGate(torch.autograd.Function):
    """`x * sigmoid(conv2(relu(conv1(mean(x)))))` with a hand-written backward (training only).

    The forward runs the module's own ops (bitwise the same result). Autograd's backward would
    materialise the mean's gradient as a full-size contiguous (NCHW) tensor and add it to the gate's
    gradient in a mixed memory layout (a slow strided pass under channels_last); here the input gradient
    is a single `addcmul` in the incoming gradient's layout, and the tiny 1x1 convs are matmuls.
    """

    @staticmethod
    def forward(ctx: object, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        pooled = _spatial_mean(x, keepdim=True)
        hidden = torch.relu(F.conv2d(pooled, w1, b1))
        gate = torch.sigmoid(F.conv2d(hidden, w2, b2))
        ctx.save_for_backward(x, pooled, hidden, gate, w1, w2)  # type: ignore[attr-defined]
        return x * gate

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        x, pooled, hidden, gate, w1, w2 = ctx.saved_tensors  # type: ignore[attr-defined]
        n, c = x.shape[:2]
        grad_gate = _spatial_sum(grad * x)
        grad_pooled, grad_w1, grad_b1, grad_w2, grad_b2 = _attention_backward(
            grad_gate, pooled, hidden, gate, w1, w2, x.shape[2] * x.shape[3]
        )
        grad_x = torch.addcmul(grad_pooled.view(n, c, 1, 1).to(grad.dtype), grad, gate.to(grad.dtype))
        return grad_x.to(x.dtype), grad_w1, grad_b1, grad_w2, grad_b2


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation gate of RCAN; the attribute name `conv_du` matches the authors' weights.

    While training, the gate runs through `_ChannelGate` (same forward, fused backward); set the class
    attribute `fused_backward = False` for plain autograd (the authors' behaviour, used as the benchmark reference).
    """

    fused_backward = True

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.fused_backward and self.training and torch.is_grad_enabled() and not torch.jit.is_tracing():
            conv1, conv2 = self.conv_du[0], self.conv_du[2]
            return _ChannelGate.apply(x, conv1.weight, conv1.bias, conv2.weight, conv2.bias)
        return x * self.conv_du(_spatial_mean(x, keepdim=True))


def _rcab_forward(
    x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, wd: Tensor, bd: Tensor, wu: Tensor, bu: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """`x + y2 * gate(mean(y2))` with `y2 = conv2(relu(conv1(x)))`: the RCAB maths with fewer memory passes.

    The gate multiply and the residual add are one `addcmul`, and the attention's 1x1 convs act on the pooled
    (N, C) vector as matmuls (a oneDNN conv call on a 1x1 image costs ~0.1 ms of set-up, 2 per block).
    Returns the output and the tensors the backward needs.
    """
    n, c = x.shape[:2]
    y1 = F.conv2d(x, w1, b1, padding=1).relu_()
    y2 = F.conv2d(y1, w2, b2, padding=1)
    pooled = _spatial_mean(y2)
    hidden = torch.relu(torch.addmm(bd, pooled, wd.flatten(1).t()))
    gate = torch.sigmoid(torch.addmm(bu, hidden, wu.flatten(1).t()))
    return torch.addcmul(x, y2, gate.view(n, c, 1, 1)), (y1, y2, pooled, hidden, gate)


class _FusedRCAB(torch.autograd.Function):
    """A whole RCAB for training: `_rcab_forward` plus a hand-scheduled backward, in the inputs' dtype.

    Same saved tensors as autograd, minus its extra memory passes: the ReLU backward and the residual's
    gradient are written in place into the convolution gradients, and the attention's backward runs on
    (N, C) vectors (in float32 when the activations are bf16/fp16).
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
        wd: Tensor, bd: Tensor, wu: Tensor, bu: Tensor,
    ) -> Tensor:
        out, (y1, y2, pooled, hidden, gate) = _rcab_forward(x, w1, b1, w2, b2, wd, bd, wu, bu)
        ctx.save_for_backward(x, y1, y2, pooled, hidden, gate, w1, w2, wd, wu)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, y1, y2, pooled, hidden, gate, w1, w2, wd, wu = ctx.saved_tensors
        needs = ctx.needs_input_grad
        n, c = x.shape[:2]
        grad_pooled, grad_wd, grad_bd, grad_wu, grad_bu = _attention_backward(
            _spatial_sum(grad * y2), pooled, hidden, gate, wd, wu, x.shape[2] * x.shape[3]
        )
        # d out / d y2 = gate, plus the mean's share, in one pass (in the activations' dtype).
        grad_y2 = torch.addcmul(grad_pooled.view(n, c, 1, 1).to(grad.dtype), grad, gate.view(n, c, 1, 1))
        conv = torch.ops.aten.convolution_backward
        grad_y1, grad_w2, grad_b2 = conv(
            grad_y2, y1, w2, [c], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, needs[3], needs[4]]
        )
        torch.ops.aten.threshold_backward.grad_input(grad_y1, y1, 0, grad_input=grad_y1)  # ReLU, in place
        grad_x, grad_w1, grad_b1 = conv(
            grad_y1, x, w1, [c], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [needs[0], needs[1], needs[2]]
        )
        if grad_x is not None:
            grad_x.add_(grad)  # the identity path
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_wd, grad_bd, grad_wu, grad_bu


class RCAB(nn.Module):
    """Residual channel-attention block: conv-ReLU-conv-CA plus identity.

    Runs as `_rcab_forward` (inference) or `_FusedRCAB` (training): same maths as the modules, fewer memory
    passes. Under autocast the block casts its input and weights to the autocast dtype once and runs the same
    functions in it, as autocast would run the modules. Set the class attribute `fused = False` for plain
    autograd over the modules (the authors' behaviour, the benchmark's reference); TorchScript tracing and
    forward hooks on the inner modules always take the module path.
    """

    fused = True

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels),
            nn.ReLU(inplace=True),
            conv3x3(channels, channels),
            ChannelAttention(channels, reduction),
        )

    def _fused_weights(self) -> tuple[Tensor, ...]:
        conv1, conv2, attention = self.body[0], self.body[2], self.body[3].conv_du
        return (
            conv1.weight, conv1.bias, conv2.weight, conv2.bias,
            attention[0].weight, attention[0].bias, attention[2].weight, attention[2].bias,
        )

    def _observed(self) -> bool:
        """True when hooks watch the inner modules (feature taps, tiled inference's shared attention statistics):
        they must then see those modules run."""
        from torch.nn.modules import module as nn_module

        if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.body.modules())

    def forward(self, x: Tensor) -> Tensor:
        if self.fused and not torch.jit.is_tracing() and not self._observed():
            weights = self._fused_weights()
            device_type = x.device.type
            if not torch.is_autocast_enabled(device_type):
                return self._run_fused(x, weights)
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):  # explicit casts: the backward then sees one dtype
                return self._run_fused(x.to(dtype), tuple(w.to(dtype) for w in weights))
        # The attention output is a fresh tensor, so adding in place saves one activation-sized buffer.
        out = self.body(x)
        out += x
        return out

    def _run_fused(self, x: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
        if self.training and torch.is_grad_enabled():
            return _FusedRCAB.apply(x, *weights)
        return _rcab_forward(x, *weights)[0]


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


class DualRegressor(DownBlock):
    """D_i: maps an image at one level back to the level x2 coarser (54 * n_feats weights)."""

    def __init__(self, n_feats: int, n_colors: int = 3, negative_slope: float = 0.2) -> None:
        super().__init__(n_colors, n_feats, n_colors, negative_slope)


class DRN(nn.Module):
    """Primal network P: bicubic pre-upsampling, a U-Net of stride-2 down blocks and RCAB up stages.

    `forward` takes a float batch in 0-255 and returns log2(scale)+1 images, coarse to fine
    (x4: LR size, 2x, 4x), each in 0-255 (not clamped).
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
        # Activation checkpointing of each RCAB while training: keeps one tensor per block instead of
        # three, for about a third more forward compute. No parameters, so state_dicts are unchanged.
        self.checkpoint_blocks = bool(checkpoint_blocks)
        if init not in ("default", "identity"):
            raise ValueError(f"init={init!r}; allowed: 'default' (PyTorch's, as the authors), 'identity'")
        self.scale = check_scale(scale)
        if n_feats < MIN_FEATS:
            raise ValueError(f"n_feats={n_feats!r} is too small; DRN needs n_feats >= {MIN_FEATS}")
        if n_blocks < 1:
            raise ValueError(f"n_blocks={n_blocks!r} must be >= 1")
        self.n_feats = n_feats
        self.n_blocks = n_blocks
        stages = num_stages(scale)
        self.stages = stages
        width = [n_feats * 2**p for p in range(stages + 1)]  # channels at each depth, shallow to deep

        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = conv3x3(n_colors, n_feats)
        self.down = nn.ModuleList(
            DownBlock(width[p], width[p], width[p + 1], negative_slope) for p in range(stages)
        )

        up_blocks = []
        for idx in range(stages):
            depth = stages - idx  # depth of the features entering this stage
            # After the first stage the input is the concatenation of upsampled and skip features.
            channels = width[depth] if idx == 0 else 2 * width[depth]
            up_blocks.append(
                nn.Sequential(
                    *(RCAB(channels, reduction) for _ in range(n_blocks)),
                    nn.Sequential(conv3x3(channels, 4 * channels), nn.PixelShuffle(2)),
                    nn.Conv2d(channels, width[depth - 1], 1),
                )
            )
        self.up_blocks = nn.ModuleList(up_blocks)
        tail_channels = [width[stages]] + [2 * width[depth] for depth in range(stages - 1, -1, -1)]
        self.tail = nn.ModuleList(conv3x3(c, n_colors) for c in tail_channels)
        self.add_mean = MeanShift(rgb_range, sign=1)
        if init == "identity":
            self.init_identity_path()

    @torch.no_grad()
    def init_identity_path(self) -> None:
        """Start the finest output at the bicubic-upsampled input: the head copies RGB into its first channels
        and the last tail reads them back through the skip, while its weights on the U-Net features start at zero.

        The architecture and state_dict are unchanged; short runs then spend their steps on detail instead of
        first relearning the image (as residual-learning SR nets do), which is what makes CPU demos useful.
        """
        colors = self.head.in_channels
        self.head.weight[:colors].zero_()
        self.head.bias[:colors].zero_()
        for c in range(colors):
            self.head.weight[c, c, 1, 1] = 1.0
        tail = self.tail[-1]
        tail.weight.zero_()
        tail.bias.zero_()
        for c in range(colors):
            tail.weight[c, self.n_feats + c, 1, 1] = 1.0

    def forward(self, lr: Tensor) -> list[Tensor]:
        x = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        x = self.head(self.sub_mean(x))
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
        for module in up:
            x = checkpoint(module, x, use_reentrant=False) if isinstance(module, RCAB) else module(x)
        return x


def build_duals(scale: int, n_feats: int, n_colors: int = 3, negative_slope: float = 0.2) -> nn.ModuleList:
    """One dual regressor per x2 step; D_i maps output i+1 (2^(i+1)x) back to level i."""
    return nn.ModuleList(DualRegressor(n_feats, n_colors, negative_slope) for _ in range(num_stages(scale)))
