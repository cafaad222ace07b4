"""Y-channel PSNR / SSIM as SR papers report them: RCAN's ``Evaluate_PSNR_SSIM.m`` protocol, per image in float64."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from drn_lightning.ops.color import quantize, rgb_to_y
from drn_lightning.options import integer

_DATA_RANGE = 255.0
_SSIM_WINDOW, _SSIM_SIGMA, _SSIM_K1, _SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al.'s ssim.m, 'valid', no downsampling


def _as_batch(x: Tensor, name: str) -> Tensor:
    """Accept (C, H, W) or (N, C, H, W) with C in {1, 3}, so single images can be scored too."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (N, C, H, W) or (C, H, W) with C in {{1, 3}}, got {tuple(x.shape)}")
    return x


def _prepare_y(sr: Tensor, hr: Tensor, scale: int, round_y: bool) -> tuple[Tensor, Tensor]:
    """Check shapes, crop SR to HR, quantise SR, convert to Y in float64 (grey input is Y), shave borders."""
    sr, hr = _as_batch(sr, "sr"), _as_batch(hr, "hr")
    if sr.shape[:2] != hr.shape[:2]:
        raise ValueError(f"sr and hr must agree in batch and channels, got sr {tuple(sr.shape)}, hr {tuple(hr.shape)}")
    if sr.shape[-2] < hr.shape[-2] or sr.shape[-1] < hr.shape[-1]:
        raise ValueError(
            f"sr {tuple(sr.shape)} is smaller than hr {tuple(hr.shape)}; sr may only be larger (it is then cropped to hr's size)"
        )
    scale = integer(scale, "scale", 0)  # the border shave
    h, w = hr.shape[-2:]
    sr = sr[..., :h, :w]
    if 2 * scale >= min(h, w):
        raise ValueError(f"shaving {scale} px per border leaves nothing of a {h}x{w} image")
    sr, hr = quantize(sr.to(torch.float64)), hr.to(torch.float64)
    if sr.shape[1] == 3:
        sr, hr = rgb_to_y(sr, round_y), rgb_to_y(hr, round_y)
    if scale > 0:
        sr, hr = sr[..., scale:-scale, scale:-scale], hr[..., scale:-scale, scale:-scale]
    return sr, hr


def psnr_y(sr: Tensor, hr: Tensor, scale: int, round_y: bool = False) -> Tensor:
    """Per-image Y-channel PSNR in dB, shape (N,); ``inf`` where SR equals HR."""
    sr_y, hr_y = _prepare_y(sr, hr, scale, round_y)
    mse = (sr_y - hr_y).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(_DATA_RANGE**2 / mse)  # mse == 0 -> +inf


@lru_cache(maxsize=32)
def _valid_gaussian_matrix(length: int, device: torch.device) -> Tensor:
    """fspecial('gaussian', 11, 1.5)'s 1-D factor, banded: 'valid' filtering is ``A_h @ img @ A_w.T``, exact, fast."""
    coords = torch.arange(_SSIM_WINDOW, dtype=torch.float64) - (_SSIM_WINDOW - 1) / 2
    g = torch.exp(-(coords**2) / (2 * _SSIM_SIGMA**2))
    g = g / g.sum()
    rows = length - _SSIM_WINDOW + 1
    mat = torch.zeros(rows, length, dtype=torch.float64)
    for offset in range(_SSIM_WINDOW):
        mat[torch.arange(rows), torch.arange(rows) + offset] = g[offset]
    return mat.to(device)


def _filter_valid(x: Tensor) -> Tensor:
    """Gaussian-weighted local mean over every fully-inside 11x11 window ('valid', like filter2)."""
    return _valid_gaussian_matrix(x.shape[-2], x.device) @ x @ _valid_gaussian_matrix(x.shape[-1], x.device).T


def ssim_y(sr: Tensor, hr: Tensor, scale: int, round_y: bool = False) -> Tensor:
    """Per-image Y-channel SSIM, shape (N,), with Wang et al.'s window and 'valid' filtering."""
    x, y = _prepare_y(sr, hr, scale, round_y)
    if min(x.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after shaving, got {tuple(x.shape[-2:])}"
        )
    c1, c2 = (_SSIM_K1 * _DATA_RANGE) ** 2, (_SSIM_K2 * _DATA_RANGE) ** 2
    mu_x, mu_y = _filter_valid(x), _filter_valid(y)
    sxx = _filter_valid(x * x) - mu_x**2
    syy = _filter_valid(y * y) - mu_y**2
    sxy = _filter_valid(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.mean(dim=(1, 2, 3))


class _MeanOverImagesY(Metric):
    """Sum per-image scores and count images, so DDP reduction gives the mean over all images."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    sum: Tensor
    count: Tensor

    def __init__(self, scale: int, round_y: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale, self.round_y = int(scale), bool(round_y)  # scale is checked where used (`_prepare_y`)
        self.add_state("sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _score(self, sr: Tensor, hr: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, sr: Tensor, hr: Tensor) -> None:
        """Score a batch of float 0-255 SR/HR images and accumulate."""
        values = self._score(sr.detach(), hr.detach())
        self.sum += values.sum().to(self.sum.device)
        self.count += values.numel()

    def compute(self) -> Tensor:
        """Mean over every image seen (NaN before any update)."""
        return self.sum / self.count


class PSNRY(_MeanOverImagesY):
    """Mean per-image Y-channel PSNR (dB) with a ``scale``-pixel border shave."""

    def _score(self, sr: Tensor, hr: Tensor) -> Tensor:
        return psnr_y(sr, hr, self.scale, self.round_y)


class SSIMY(_MeanOverImagesY):
    """Mean per-image Y-channel SSIM (Wang et al. 2004) with a ``scale``-pixel border shave."""

    def _score(self, sr: Tensor, hr: Tensor) -> Tensor:
        return ssim_y(sr, hr, self.scale, self.round_y)
