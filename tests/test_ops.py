"""Tests for drn_lightning.ops: MATLAB imresize, degradations, colour.

Truth comes from (a) a loop-style NumPy transcription of MATLAB's documented ``imresize``
algorithm written independently below, (b) hand-computed values, (c) scikit-image.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr

from drn_lightning.ops import (
    DEGRADATIONS,
    bd_downsample,
    bicubic_downsample,
    cubic,
    imresize,
    lr_pyramid,
    nearest_downsample,
    quantize,
    rgb_to_y,
)

# --------------------------------------------------------------------------------------------
# Independent NumPy reference of MATLAB imresize (imresize.m: contributions + resizeAlongDim)
# --------------------------------------------------------------------------------------------


def ref_cubic(x: float) -> float:
    """MATLAB's cubic(): Keys kernel, a = -0.5."""
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def ref_box(x: float) -> float:
    """MATLAB's box(): 1 on [-0.5, 0.5)."""
    return 1.0 if -0.5 <= x < 0.5 else 0.0


def ref_contributions(
    in_len: int, out_len: int, scale: float, kernel: str, antialias: bool
) -> tuple[list[list[float]], list[list[int]]]:
    """Per output pixel: the list of weights and 1-based source indices, as MATLAB computes them."""
    base, width = (ref_cubic, 4.0) if kernel == "bicubic" else (ref_box, 1.0)
    if scale < 1 and antialias:
        width = width / scale

        def h(x: float) -> float:
            return scale * base(scale * x)

    else:
        h = base
    taps = math.ceil(width) + 2
    all_w: list[list[float]] = []
    all_i: list[list[int]] = []
    for out in range(1, out_len + 1):
        x = out / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(x - width / 2)
        idx = [left + p for p in range(taps)]
        w = [h(x - i) for i in idx]
        total = sum(w)
        all_w.append([v / total for v in w])
        all_i.append(idx)
    # Mirror indices: aux = [1..n, n..1], index k -> aux(mod(k-1, 2n) + 1).
    aux = list(range(1, in_len + 1)) + list(range(in_len, 0, -1))
    all_i = [[aux[(k - 1) % (2 * in_len)] for k in row] for row in all_i]
    # Drop tap columns whose weight is zero for every output pixel.
    keep = [p for p in range(taps) if any(row[p] != 0 for row in all_w)]
    all_w = [[row[p] for p in keep] for row in all_w]
    all_i = [[row[p] for p in keep] for row in all_i]
    return all_w, all_i


def ref_resize_along(
    img: np.ndarray, axis: int, out_len: int, scale: float, kernel: str, antialias: bool, as_uint8: bool
) -> np.ndarray:
    """One MATLAB pass along ``axis`` of an H x W x C array; uint8 results are rounded per pass."""
    weights, indices = ref_contributions(img.shape[axis], out_len, scale, kernel, antialias)
    src = np.moveaxis(img.astype(np.float64), axis, 0)
    out = np.zeros((out_len, *src.shape[1:]), dtype=np.float64)
    for o in range(out_len):
        for w, i in zip(weights[o], indices[o]):
            out[o] += w * src[i - 1]
    out = np.moveaxis(out, 0, axis)
    if as_uint8:
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out


def ref_imresize(
    img: np.ndarray,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    kernel: str = "bicubic",
    antialias: bool = True,
) -> np.ndarray:
    """MATLAB imresize of an H x W x C array (uint8 -> uint8, float -> float64)."""
    h, w = img.shape[:2]
    if scale is not None:
        sh = sw = scale
        oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    else:
        assert size is not None
        oh, ow = size
        sh, sw = oh / h, ow / w
    as_uint8 = img.dtype == np.uint8
    out = img
    order = [(0, oh, sh), (1, ow, sw)] if sh <= sw else [(1, ow, sw), (0, oh, sh)]
    for axis, n, s in order:
        out = ref_resize_along(out, axis, n, s, kernel, antialias, as_uint8)
    return out


def to_chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------------------------
# imresize against the reference on real photos
# --------------------------------------------------------------------------------------------

SCALES = [1 / 2, 1 / 3, 1 / 4, 1 / 8, 2.0, 4.0, 0.37, 1.7]


@pytest.mark.parametrize("scale", SCALES, ids=[f"x{s:.3g}" for s in SCALES])
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_imresize_float_matches_matlab_reference(skimage_photos, name, scale):
    img = skimage_photos[name]
    if scale > 1:  # keep the reference's loops quick on upscales
        img = img[:96, :128]
    ref = ref_imresize(img.astype(np.float64), scale=scale)
    out = imresize(to_chw(img).double(), scale=scale)
    assert out.dtype == torch.float64
    assert tuple(out.shape) == (3, *ref.shape[:2])
    np.testing.assert_allclose(to_hwc(out), ref, atol=1e-4, rtol=0)
    # float32 stays float32 and agrees within float32 accuracy
    out32 = imresize(to_chw(img).float(), scale=scale)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(to_hwc(out32), ref, atol=2e-3, rtol=0)


@pytest.mark.parametrize("scale", SCALES, ids=[f"x{s:.3g}" for s in SCALES])
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_imresize_uint8_matches_matlab_reference(skimage_photos, name, scale):
    img = skimage_photos[name]
    if scale > 1:
        img = img[:96, :128]
    ref = ref_imresize(img, scale=scale)
    out = imresize(to_chw(img), scale=scale)
    assert out.dtype == torch.uint8
    diff = np.abs(to_hwc(out).astype(np.int32) - ref.astype(np.int32))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3  # only floating-point rounding ties may differ


def test_imresize_size_argument_and_dimension_order(skimage_photos):
    # Shrink rows, enlarge columns: MATLAB resizes rows (smaller scale) first; with per-pass
    # uint8 rounding the order is visible in the result.
    img = skimage_photos["chelsea"][:120, :80]
    out = imresize(to_chw(img), size=(45, 130))
    ref = ref_imresize(img, size=(45, 130))
    assert tuple(out.shape) == (3, 45, 130)
    diff = np.abs(to_hwc(out).astype(np.int32) - ref.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    out_f = imresize(to_chw(img).double(), size=(45, 130))
    np.testing.assert_allclose(to_hwc(out_f), ref_imresize(img.astype(np.float64), size=(45, 130)), atol=1e-4, rtol=0)


def test_imresize_batched_and_unbatched_agree(skimage_photos):
    imgs = torch.stack([to_chw(skimage_photos["astronaut"][:64, :80]), to_chw(skimage_photos["coffee"][:64, :80])])
    batched = imresize(imgs.view(1, 2, 3, 64, 80), scale=0.25)
    assert tuple(batched.shape) == (1, 2, 3, 16, 20)
    for k in range(2):
        assert torch.equal(batched[0, k], imresize(imgs[k], scale=0.25))


def test_cubic_kernel_closed_form():
    # 1.5|x|^3 - 2.5|x|^2 + 1 for |x| <= 1, -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 for 1 < |x| <= 2
    xs = np.array([0.0, 0.5, 1.0, 1.5, 2.0, -0.5, -1.5, 2.5])
    expected = np.array([1.0, 0.5625, 0.0, -0.0625, 0.0, 0.5625, -0.0625, 0.0])
    np.testing.assert_allclose(cubic(xs), expected, atol=1e-15)


def test_upscaled_impulse_samples_the_kernel():
    # x2 upscale of an impulse at 1-based column 5 of 9: output j (1-based) sits at source
    # coordinate j/2 + 0.25, so its value is cubic(j/2 + 0.25 - 5); weights already sum to 1.
    row = torch.zeros(1, 1, 9, dtype=torch.float64)
    row[..., 4] = 1.0
    out = imresize(row, size=(1, 18))[0, 0].numpy()
    expected = np.array([ref_cubic(j / 2 + 0.25 - 5) for j in range(1, 19)])
    np.testing.assert_allclose(out, expected, atol=1e-12)
    # spot values: j=9 -> offset -0.25, j=10 -> +0.25: 1.5/64 - 2.5/16 + 1 = 0.8671875
    assert out[8] == pytest.approx(0.8671875) and out[9] == pytest.approx(0.8671875)


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.37, 2.0, 3.0])
def test_constant_image_stays_constant(scale):
    img = torch.full((3, 17, 23), 137, dtype=torch.uint8)
    assert torch.all(imresize(img, scale=scale) == 137)
    out = imresize(img.double() + 0.25, scale=scale)
    torch.testing.assert_close(out, torch.full_like(out, 137.25), atol=1e-10, rtol=0)


def test_output_size_rule():
    img = torch.zeros(2, 17, 23)
    assert imresize(img, scale=1 / 4).shape[-2:] == (5, 6)  # ceil(4.25), ceil(5.75)
    assert imresize(img, scale=1 / 3).shape[-2:] == (6, 8)
    assert imresize(img, scale=2.5).shape[-2:] == (43, 58)  # ceil(42.5), ceil(57.5)
    assert imresize(img, size=(7, 40)).shape == (2, 7, 40)


def test_imresize_rejects_bad_arguments():
    img = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(img, scale=0.5, size=(4, 4))
    with pytest.raises(ValueError, match="-1"):
        imresize(img, scale=-1.0)
    with pytest.raises(ValueError, match="'lanczos'"):
        imresize(img, scale=0.5, method="lanczos")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int32"):
        imresize(img.int(), scale=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_imresize_cuda_matches_cpu(skimage_photos):
    img = to_chw(skimage_photos["astronaut"])
    for x in (img, img.double()):
        cpu = imresize(x, scale=0.25)
        gpu = imresize(x.cuda(), scale=0.25).cpu()
        if x.dtype == torch.uint8:
            assert (cpu.int() - gpu.int()).abs().max() <= 1
        else:
            torch.testing.assert_close(gpu, cpu, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# Degradations
# --------------------------------------------------------------------------------------------


def test_nearest_picks_block_centres_like_matlab():
    # MATLAB box kernel: output i (0-based) takes source floor((i + 0.5) * s); past the end the
    # index mirrors (length 5, x4: 6 -> 3; length 7, x3: 7 -> 6).
    row = torch.arange(8, dtype=torch.float64).view(1, 1, 8).expand(1, 8, 8)
    out = nearest_downsample(row, 4)
    assert out[0, 0].tolist() == [2.0, 6.0]
    assert nearest_downsample(torch.arange(5.0).view(1, 1, 5), 4)[0, 0].tolist() == [2.0, 3.0]
    assert nearest_downsample(torch.arange(7.0).view(1, 1, 7), 3)[0, 0].tolist() == [1.0, 4.0, 6.0]


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_nearest_matches_reference_box_kernel(skimage_photos, scale):
    img = skimage_photos["chelsea"][:101, :133]
    ref = ref_imresize(img, scale=1 / scale, kernel="nearest", antialias=False)
    out = nearest_downsample(to_chw(img), scale)
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(to_hwc(out), ref)


def ref_bd(img: np.ndarray, scale: int, ksize: int = 7, sigma: float = 1.6) -> np.ndarray:
    """imfilter(img, fspecial('gaussian', 7, 1.6), 'replicate') then imresize(.., 'nearest')."""
    r = ksize // 2
    g = np.array([[math.exp(-(x * x + y * y) / (2 * sigma**2)) for x in range(-r, r + 1)] for y in range(-r, r + 1)])
    g /= g.sum()
    padded = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    blurred = np.zeros(img.shape, dtype=np.float64)
    for dy in range(ksize):
        for dx in range(ksize):
            blurred += g[dy, dx] * padded[dy : dy + h, dx : dx + w]
    if img.dtype == np.uint8:
        blurred = np.clip(np.floor(blurred + 0.5), 0, 255).astype(np.uint8)
    return ref_imresize(blurred, scale=1 / scale, kernel="nearest", antialias=False)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bd_downsample_matches_reference(skimage_photos, scale):
    img = skimage_photos["coffee"][100:197, 200:331]
    out = bd_downsample(to_chw(img), scale)
    ref = ref_bd(img, scale)
    assert out.dtype == torch.uint8
    diff = np.abs(to_hwc(out).astype(np.int32) - ref.astype(np.int32))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    out_f = bd_downsample(to_chw(img).double(), scale)
    np.testing.assert_allclose(to_hwc(out_f), ref_bd(img.astype(np.float64), scale), atol=1e-4)


def test_bicubic_downsample_is_matlab_imresize(skimage_photos):
    img = skimage_photos["astronaut"][:130, :97]
    out = bicubic_downsample(to_chw(img), 4)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 33, 25)
    diff = np.abs(to_hwc(out).astype(np.int32) - ref_imresize(img, scale=0.25).astype(np.int32))
    assert diff.max() <= 1


@pytest.mark.parametrize("method", sorted(DEGRADATIONS))
def test_lr_pyramid_levels_come_straight_from_hr(skimage_photos, method):
    hr = to_chw(skimage_photos["coffee"][:128, :96]).unsqueeze(0)
    levels = lr_pyramid(hr, 8, method)
    assert [tuple(t.shape[-2:]) for t in levels] == [(16, 12), (32, 24), (64, 48)]
    assert all(t.dtype == torch.uint8 for t in levels)
    for level, factor in zip(levels, (8, 4, 2)):
        assert torch.equal(level, DEGRADATIONS[method](hr, factor))
    assert [tuple(t.shape[-2:]) for t in lr_pyramid(hr, 2, method)] == [(64, 48)]


def test_lr_pyramid_is_not_cascaded(skimage_photos):
    hr = to_chw(skimage_photos["astronaut"][:128, :128]).double()
    coarse, fine = lr_pyramid(hr, 4)
    cascaded = bicubic_downsample(fine, 2)
    assert (coarse - cascaded).abs().max() > 1.0  # different filters -> visibly different


def test_degradation_errors_name_bad_values():
    hr = torch.zeros(3, 16, 16)
    with pytest.raises(ValueError, match=r"'blurry'.*bd.*bicubic.*nearest"):
        lr_pyramid(hr, 4, "blurry")
    with pytest.raises(ValueError, match="power of two.*3"):
        lr_pyramid(hr, 3)
    with pytest.raises(ValueError, match="2.5"):
        bicubic_downsample(hr, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel_size.*6"):
        bd_downsample(hr, 2, kernel_size=6)


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------


def test_rgb_to_y_hand_values():
    rgb = torch.tensor([[0.0, 255.0, 255.0, 0.0], [0.0, 255.0, 0.0, 0.0], [0.0, 255.0, 0.0, 255.0]])
    y = rgb_to_y(rgb.view(3, 1, 4).double())
    assert y.shape == (1, 1, 4)
    # black 16, white 16 + 219 = 235, red 16 + 65.481, blue 16 + 24.966
    torch.testing.assert_close(y.flatten(), torch.tensor([16.0, 235.0, 81.481, 40.966], dtype=torch.float64))
    assert rgb_to_y(rgb.view(3, 1, 4), round_y=True).flatten().tolist() == [16.0, 235.0, 81.0, 41.0]


def test_rgb_to_y_matches_skimage(skimage_photos):
    img = skimage_photos["coffee"]
    ref = rgb2ycbcr(img)[..., 0]  # BT.601, Y in 16..235 for uint8 RGB
    y = rgb_to_y(to_chw(img).double().unsqueeze(0))
    assert y.shape == (1, 1, *img.shape[:2])
    np.testing.assert_allclose(y[0, 0].numpy(), ref, atol=1e-9)
    y_round = rgb_to_y(to_chw(img).double(), round_y=True)[0].numpy()
    np.testing.assert_array_equal(y_round, np.floor(ref + 0.5))


def test_rgb_to_y_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\(1, 4, 4\)"):
        rgb_to_y(torch.zeros(1, 4, 4))


def test_quantize_rounds_like_uint8_cast():
    x = torch.tensor([-3.0, 0.5, 1.49, 2.5, 254.5, 300.0], dtype=torch.float64)
    out = quantize(x)
    assert out.dtype == torch.float64
    assert out.tolist() == [0.0, 1.0, 1.0, 3.0, 255.0, 255.0]
