"""Tests for drn_lightning.metrics against hand-computed values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from drn_lightning.metrics import PSNRY, SSIMY, psnr_y, ssim_y
from drn_lightning.ops import imresize


def to_nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).unsqueeze(0).double()


def bicubic_sr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """A realistic SR stand-in: MATLAB bicubic down then up (float output, not quantised)."""
    return imresize(imresize(hr.to(torch.uint8), scale=1 / scale).double(), scale=scale)


def test_psnr_constant_offset_greyscale():
    hr = torch.full((2, 1, 20, 24), 100.0)
    for d in (1, 5, 40):
        expected = 20 * math.log10(255 / d)
        got = psnr_y(hr + d, hr, scale=2)
        torch.testing.assert_close(got, torch.full((2,), expected, dtype=torch.float64))


def test_psnr_constant_offset_rgb_goes_through_y():
    # +d on R, G and B moves Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255.
    hr = torch.full((1, 3, 20, 24), 90.0)
    d = 10.0
    expected = 20 * math.log10(255 / (d * 219 / 255))
    assert psnr_y(hr + d, hr, scale=4).item() == pytest.approx(expected, abs=1e-9)
    # with Y rounded: 16 + 90*219/255 = 93.29 -> 93 and 16 + 100*219/255 = 101.88 -> 102
    assert psnr_y(hr + d, hr, scale=4, round_y=True).item() == pytest.approx(20 * math.log10(255 / 9), abs=1e-9)


def test_psnr_identical_is_inf_and_mean_is_inf():
    hr = torch.rand(2, 3, 16, 16, dtype=torch.float64).mul(255).round()
    assert torch.isinf(psnr_y(hr, hr, scale=2)).all()
    metric = PSNRY(scale=2)
    metric.update(hr, hr)
    metric.update(hr + 3, hr)
    assert math.isinf(metric.compute().item())


def test_sr_is_quantised_before_scoring():
    hr = torch.full((1, 1, 16, 16), 50.0)
    assert torch.isinf(psnr_y(hr + 0.4, hr, scale=1)).all()  # rounds back to 50
    assert psnr_y(hr + 0.6, hr, scale=1).item() == pytest.approx(20 * math.log10(255), abs=1e-9)
    # clamped to 0..255 as well: -20 scores like 0
    low = torch.zeros(1, 1, 16, 16)
    assert psnr_y(low - 20, low + 5, 1).item() == pytest.approx(20 * math.log10(255 / 5))


def test_shave_removes_exactly_scale_pixels():
    hr = torch.full((1, 1, 30, 30), 128.0)
    sr = hr.clone()
    sr[..., :3, :] = 0.0  # damage a 3-pixel top band
    assert torch.isinf(psnr_y(sr, hr, scale=3)).all()
    assert torch.isfinite(psnr_y(sr, hr, scale=2)).all()
    # 1 damaged row of 26 remaining rows, error 128: mse = 128^2 / 26
    assert psnr_y(sr, hr, scale=2).item() == pytest.approx(10 * math.log10(255**2 * 26 / 128**2))


def test_psnr_matches_skimage_on_photos(skimage_photos):
    for img in skimage_photos.values():
        hr = to_nchw(img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4])
        sr = bicubic_sr(hr, 4)
        sr_q = np.floor(np.clip(sr[0].numpy().transpose(1, 2, 0), 0, 255) + 0.5)
        y_sr = rgb2ycbcr(sr_q / 255.0)[4:-4, 4:-4, 0]  # float input in [0, 1] -> Y in 16..235
        y_hr = rgb2ycbcr(hr[0].numpy().transpose(1, 2, 0) / 255.0)[4:-4, 4:-4, 0]
        expected = peak_signal_noise_ratio(y_hr, y_sr, data_range=255)
        assert psnr_y(sr, hr, scale=4).item() == pytest.approx(expected, abs=1e-8)


def test_ssim_identical_is_one():
    hr = torch.rand(2, 3, 40, 40, dtype=torch.float64).mul(255).round()
    torch.testing.assert_close(ssim_y(hr, hr, scale=4), torch.ones(2, dtype=torch.float64))


def test_ssim_matches_skimage_on_photos(skimage_photos):
    # skimage filters the whole image with reflect padding and then averages only pixels at least
    # (win - 1) / 2 = 5 from the border, i.e. exactly the 'valid' positions ssim.m averages.
    for img in skimage_photos.values():
        hr = to_nchw(img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4])
        sr = bicubic_sr(hr, 4)
        sr_q = np.floor(np.clip(sr[0].numpy().transpose(1, 2, 0), 0, 255) + 0.5)
        y_sr = rgb2ycbcr(sr_q / 255.0)[4:-4, 4:-4, 0]
        y_hr = rgb2ycbcr(hr[0].numpy().transpose(1, 2, 0) / 255.0)[4:-4, 4:-4, 0]
        expected = structural_similarity(
            y_hr, y_sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        got = ssim_y(sr, hr, scale=4).item()
        assert 0.5 < got < 0.99
        assert got == pytest.approx(expected, abs=1e-6)


def test_larger_sr_is_cropped_smaller_raises():
    hr = torch.full((1, 3, 24, 24), 60.0)
    sr = torch.full((1, 3, 30, 28), 60.0)
    sr[..., 24:, :] = 255.0  # outside hr's extent: must be ignored
    sr[..., :, 24:] = 255.0
    assert torch.isinf(psnr_y(sr, hr, scale=2)).all()
    assert ssim_y(sr, hr, scale=2).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(1, 3, 20, 24\).*\(1, 3, 24, 24\)"):
        psnr_y(sr[..., :20, :24], hr, scale=2)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(1, 2, 8, 8\)"):
        psnr_y(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), 1)
    with pytest.raises(ValueError, match="shaving 4"):
        psnr_y(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), 4)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), 4)


def test_metric_is_mean_over_images_not_batches(skimage_photos):
    imgs = [to_nchw(im[:96, :128]) for im in skimage_photos.values()]
    hr = torch.cat(imgs)
    sr = bicubic_sr(hr, 4)
    per_image_p = psnr_y(sr, hr, 4)
    per_image_s = ssim_y(sr, hr, 4)
    assert per_image_p.shape == (3,) and len(set(per_image_p.tolist())) == 3
    p, s = PSNRY(scale=4), SSIMY(scale=4)
    for metric in (p, s):
        metric.update(sr[:2], hr[:2])
        metric.update(sr[2:], hr[2:])
    assert p.compute().item() == pytest.approx(per_image_p.mean().item(), abs=1e-12)
    assert s.compute().item() == pytest.approx(per_image_s.mean().item(), abs=1e-12)
    # unequal batches (2 + 1): the batch-mean average would differ from the image mean
    batch_mean = (per_image_p[:2].mean() + per_image_p[2]) / 2
    assert abs(batch_mean.item() - p.compute().item()) > 1e-3


def test_ddp_style_merge_gives_mean_over_all_images(skimage_photos):
    imgs = [to_nchw(im[:96, :128]) for im in skimage_photos.values()]
    hr = torch.cat(imgs)
    sr = bicubic_sr(hr, 4)
    for cls, fn in ((PSNRY, psnr_y), (SSIMY, ssim_y)):
        rank0, rank1 = cls(scale=4), cls(scale=4)
        rank0.update(sr[:1], hr[:1])
        rank1.update(sr[1:], hr[1:])
        expected = fn(sr, hr, 4).mean().item()
        # summing states is what dist_reduce_fx="sum" does across processes
        summed = (rank0.sum + rank1.sum) / (rank0.count + rank1.count)
        assert summed.item() == pytest.approx(expected, abs=1e-12)
        rank0.merge_state(rank1)
        assert int(rank0.count) == 3
        assert rank0.compute().item() == pytest.approx(expected, abs=1e-12)


def test_metric_reset_and_greyscale_input():
    m = PSNRY(scale=1, round_y=True)
    hr = torch.full((1, 1, 10, 10), 30.0)
    m.update(hr + 5, hr)
    assert m.compute().item() == pytest.approx(20 * math.log10(255 / 5))
    m.reset()
    assert int(m.count) == 0
    m.update(hr + 1, hr)
    assert m.compute().item() == pytest.approx(20 * math.log10(255))
