"""Inference: tiling equals whole-image output, self-ensemble, the upscale() API on PIL/NumPy/tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from torch import Tensor, nn

import drn_lightning
from drn_lightning.inference import (
    DEFAULT_TILE_OVERLAP,
    SharedChannelStats,
    Upscaler,
    load_upscaler,
    upscale,
)
from drn_lightning.models import CheckpointError, build_drn, official_to_checkpoint, save_official
from drn_lightning.models.drn import ChannelAttention
from drn_lightning.ops.imresize import imresize
from drn_lightning.ops.tiling import self_ensemble_forward, tile_boxes, tiled_forward


def quantise(x: Tensor) -> Tensor:
    """What a saved 8-bit PNG holds: clamp, round half up."""
    return torch.floor(x.clamp(0, 255) + 0.5)


def photo_lr(height: int, width: int, scale: int) -> Tensor:
    """A real photo crop (astronaut) downscaled with MATLAB bicubic to (1, 3, height, width) float 0-255."""
    hr = torch.from_numpy(skdata.astronaut()[60 : 60 + height * scale, 120 : 120 + width * scale]).permute(2, 0, 1)
    lr = imresize(hr.contiguous(), scale=1 / scale)
    assert tuple(lr.shape[-2:]) == (height, width)
    return lr.float()[None]


def random_drn(variant: str = "drn_tiny", scale: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    primal, _ = build_drn(variant, scale, dual=False)
    return primal.eval()


class NearestUp(nn.Module):
    """Flip/transpose-equivariant stand-in SR model: nearest-neighbour x`scale` upsampling."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return x.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1)


# --- tiled_forward on plain functions ------------------------------------------------------------


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(37, 23, 10, 2), (16, 16, 5, 0), (9, 40, 7, 3)])
def test_tile_boxes_partition_the_image(height: int, width: int, tile: int, overlap: int) -> None:
    cover = torch.zeros(height, width, dtype=torch.int64)
    for box in tile_boxes(height, width, tile, overlap):
        assert box.y1 - box.y0 <= tile and box.x1 - box.x0 <= tile
        assert box.cy0 == max(0, box.y0 - overlap) and box.cy1 == min(height, box.y1 + overlap)
        assert box.cx0 == max(0, box.x0 - overlap) and box.cx1 == min(width, box.x1 + overlap)
        cover[box.y0 : box.y1, box.x0 : box.x1] += 1
    assert bool((cover == 1).all())


def test_tiled_local_fn_is_exact_with_overlap_of_its_radius() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)  # receptive radius 1 LR pixel

    def fn(x: Tensor) -> Tensor:
        return F.interpolate(conv(x), scale_factor=3, mode="nearest")

    lr = torch.rand(2, 3, 29, 17) * 255  # odd, non-square, batch of 2
    with torch.no_grad():
        whole = fn(lr)
        exact = tiled_forward(fn, lr, 3, tile=6, overlap=1)
        seams = tiled_forward(fn, lr, 3, tile=6, overlap=0)
    assert exact.shape == (2, 3, 87, 51)
    assert torch.allclose(exact, whole, atol=1e-4, rtol=0)
    assert (seams - whole).abs().max() > 1.0  # zero padding at the seams shows without context


def test_tile_larger_than_image_takes_the_plain_path() -> None:
    calls: list[tuple[int, ...]] = []

    def fn(x: Tensor) -> Tensor:
        calls.append(tuple(x.shape))
        return NearestUp(2)(x)

    lr = torch.rand(1, 3, 13, 11)
    assert torch.equal(tiled_forward(fn, lr, 2, tile=64, overlap=8), NearestUp(2)(lr))
    assert torch.equal(tiled_forward(fn, lr, 2, tile=None, overlap=8), NearestUp(2)(lr))
    assert calls == [(1, 3, 13, 11)] * 2


def test_tiled_forward_rejects_a_fn_of_the_wrong_scale() -> None:
    with pytest.raises(ValueError, match="scale=4"):
        tiled_forward(NearestUp(2), torch.rand(1, 3, 20, 20), 4, tile=8, overlap=2)
    with pytest.raises(ValueError, match="tile"):
        tiled_forward(NearestUp(2), torch.rand(1, 3, 20, 20), 2, tile=0, overlap=2)


# --- tiled DRN == whole-image DRN -----------------------------------------------------------------


def test_first_attention_layer_sees_the_whole_image_mean() -> None:
    """The per-tile core sums add up to the image-wide mean (the first layer's input is exact with overlap)."""
    model = random_drn("drn_tiny", 2)
    lr = photo_lr(27, 33, 2)
    first = next(m for m in model.modules() if isinstance(m, ChannelAttention))
    seen: list[Tensor] = []
    handle = first.register_forward_hook(lambda m, args, out: seen.append(args[0].mean(dim=(2, 3))))
    with torch.inference_mode():
        model(lr)
    handle.remove()
    with torch.inference_mode(), SharedChannelStats(model, 27, 33) as stats:
        stats.start_pass()
        tiled_forward(lambda x: model(x)[-1], lr, 2, tile=10, overlap=DEFAULT_TILE_OVERLAP, on_tile=stats.on_tile)
        stats.end_pass()
    gathered = stats._means[0][..., 0, 0]  # type: ignore[index]
    assert torch.allclose(gathered, seen[0], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("scale", "size", "tile"), [(2, (41, 37), 16), (4, (23, 29), 10)])
def test_tiled_drn_tiny_matches_whole_image_within_one_level(scale: int, size: tuple[int, int], tile: int) -> None:
    model = random_drn("drn_tiny", scale)
    lr = photo_lr(*size, scale)
    whole = Upscaler(model, device="cpu").upscale_tensor(lr)
    tiled = Upscaler(model, device="cpu", tile=tile).upscale_tensor(lr)
    assert tiled.shape == whole.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert (quantise(tiled) - quantise(whole)).abs().max() <= 1
    assert (tiled - whole).abs().max() < 0.05


def test_sharing_attention_statistics_beats_per_tile_statistics() -> None:
    model = random_drn("drn_tiny", 2)
    lr = photo_lr(40, 36, 2)
    whole = Upscaler(model, device="cpu").upscale_tensor(lr)
    per_tile = Upscaler(model, device="cpu", tile=12, tile_passes=1).upscale_tensor(lr)
    shared = Upscaler(model, device="cpu", tile=12, tile_passes=2).upscale_tensor(lr)
    err_per_tile = float((per_tile - whole).abs().max())
    err_shared = float((shared - whole).abs().max())
    assert err_shared < err_per_tile / 10, (err_shared, err_per_tile)


@pytest.mark.slow
def test_tiled_drn_s_x4_matches_whole_image_on_a_photo() -> None:
    model = random_drn("drn_s", 4)
    lr = photo_lr(80, 96, 4)  # a 320x384 HR crop, 80x96 LR
    whole = Upscaler(model, device="cpu").upscale_tensor(lr)
    tiled = Upscaler(model, device="cpu", tile=48).upscale_tensor(lr)  # 2x2 tiles, default overlap/passes
    assert (quantise(tiled) - quantise(whole)).abs().max() <= 1
    assert (tiled - whole).abs().max() < 0.1


# --- self-ensemble ---------------------------------------------------------------------------------


def test_self_ensemble_of_an_equivariant_model_is_the_plain_output() -> None:
    lr = torch.rand(2, 3, 7, 12) * 255
    model = NearestUp(3)
    assert torch.allclose(self_ensemble_forward(model, lr), model(lr), atol=1e-4, rtol=0)


def test_self_ensemble_is_the_average_of_the_eight_transforms() -> None:
    model = random_drn("drn_tiny", 2)
    lr = photo_lr(14, 11, 2)  # non-square, so transposes change the shape
    fn = lambda x: model(x)[-1]  # noqa: E731
    with torch.inference_mode():
        plain = fn(lr)
        ensemble = self_ensemble_forward(fn, lr)
        # Independent construction: rotations by k*90 degrees, with and without a horizontal mirror.
        outs = []
        for mirror in (False, True):
            base = lr.flip(-1) if mirror else lr
            for k in range(4):
                sr = torch.rot90(fn(torch.rot90(base, k, (-2, -1)).contiguous()), -k, (-2, -1))
                outs.append(sr.flip(-1) if mirror else sr)
        manual = torch.stack(outs).mean(0)
    assert ensemble.shape == plain.shape == (1, 3, 28, 22)
    assert torch.allclose(ensemble, manual, atol=1e-3, rtol=0)
    assert (ensemble - plain).abs().max() > 0.1


def test_upscaler_self_ensemble_with_tiles_runs() -> None:
    model = random_drn("drn_tiny", 2)
    lr = photo_lr(20, 18, 2)
    out = Upscaler(model, device="cpu", tile=12, self_ensemble=True).upscale_tensor(lr)
    ref = Upscaler(model, device="cpu", self_ensemble=True).upscale_tensor(lr)
    assert (quantise(out) - quantise(ref)).abs().max() <= 1


# --- upscale(): input kinds ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny2() -> nn.Module:
    return random_drn("drn_tiny", 2)


@pytest.fixture(scope="module")
def rgb_u8() -> np.ndarray:
    return skdata.astronaut()[100:121, 200:233].copy()  # 21x33, odd


def test_numpy_in_numpy_out(tiny2: nn.Module, rgb_u8: np.ndarray) -> None:
    out = upscale(rgb_u8, model=tiny2, device="cpu")
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (42, 66, 3)
    as_tensor = upscale(torch.from_numpy(rgb_u8).permute(2, 0, 1).float(), model=tiny2, device="cpu")
    assert np.array_equal(out, quantise(as_tensor).to(torch.uint8).permute(1, 2, 0).numpy())


def test_pil_in_pil_out(tiny2: nn.Module, rgb_u8: np.ndarray) -> None:
    out = upscale(Image.fromarray(rgb_u8), model=tiny2, device="cpu")
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (66, 42)
    assert np.array_equal(np.asarray(out), upscale(rgb_u8, model=tiny2, device="cpu"))


def test_tensor_in_tensor_out_unquantised(tiny2: nn.Module, rgb_u8: np.ndarray) -> None:
    chw = torch.from_numpy(rgb_u8).permute(2, 0, 1).float()
    single = upscale(chw, model=tiny2, device="cpu")
    batch = upscale(torch.stack([chw, chw.flip(-1)]), model=tiny2, device="cpu")
    assert single.dtype == torch.float32 and single.shape == (3, 42, 66)
    assert batch.shape == (2, 3, 42, 66)
    assert torch.allclose(batch[0], single, atol=1e-3)
    assert not torch.equal(single, quantise(single))  # float output is not rounded
    with torch.inference_mode():
        assert torch.allclose(single, tiny2(chw[None])[-1][0], atol=1e-3)
    as_u8 = upscale(chw.to(torch.uint8), model=tiny2, device="cpu")
    assert as_u8.dtype == torch.uint8 and torch.equal(as_u8, quantise(single).to(torch.uint8))


def test_greyscale_inputs_are_repeated_to_rgb(tiny2: nn.Module, rgb_u8: np.ndarray) -> None:
    grey = rgb_u8[..., 1].copy()
    rgb_of_grey = upscale(np.repeat(grey[..., None], 3, axis=2), model=tiny2, device="cpu")
    out = upscale(grey, model=tiny2, device="cpu")
    assert out.shape == (42, 66) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb_of_grey.mean(axis=2)).max() <= 1.0
    pil = upscale(Image.fromarray(grey, mode="L"), model=tiny2, device="cpu")
    assert pil.mode == "L" and np.array_equal(np.asarray(pil), out)
    t = upscale(torch.from_numpy(grey).float()[None], model=tiny2, device="cpu")
    assert t.shape == (1, 42, 66)


def test_rgba_keeps_an_upscaled_alpha(tiny2: nn.Module, rgb_u8: np.ndarray) -> None:
    rgba = np.dstack([rgb_u8, np.full(rgb_u8.shape[:2], 200, np.uint8)])
    out = upscale(Image.fromarray(rgba, mode="RGBA"), model=tiny2, device="cpu")
    assert out.mode == "RGBA" and out.size == (66, 42)
    arr = np.asarray(out)
    assert (arr[..., 3] == 200).all()
    assert np.array_equal(arr[..., :3], upscale(rgb_u8, model=tiny2, device="cpu"))


def test_weights_files_infer_variant_and_scale(tmp_path, rgb_u8: np.ndarray) -> None:
    torch.manual_seed(3)
    primal, duals = build_drn("drn_tiny", 4)
    save_official(primal, duals, tmp_path / "p.pt", tmp_path / "d.pt")
    official_to_checkpoint(
        primal, duals, {"variant": "drn_tiny", "scale": 4, "n_feats": 8, "n_blocks": 4}, tmp_path / "w.ckpt"
    )
    from_pt = drn_lightning.upscale(rgb_u8, tmp_path / "p.pt", device="cpu")
    from_ckpt = upscale(rgb_u8, str(tmp_path / "w.ckpt"), device="cpu")
    from_model = upscale(rgb_u8, model=primal, device="cpu")
    assert from_pt.shape == (84, 132, 3)
    assert np.array_equal(from_pt, from_ckpt) and np.array_equal(from_pt, from_model)
    up = load_upscaler(tmp_path / "p.pt", device="cpu")
    assert up.scale == 4 and up.info["variant"] == "drn_tiny"
    with pytest.raises(CheckpointError, match=r"p\.pt.*expected scale x2"):
        upscale(rgb_u8, tmp_path / "p.pt", scale=2, device="cpu")


def test_bad_arguments_name_the_option(tiny2: nn.Module, rgb_u8: np.ndarray) -> None:
    with pytest.raises(ValueError, match="exactly one of weights"):
        upscale(rgb_u8)
    with pytest.raises(ValueError, match="--precision"):
        upscale(rgb_u8, model=tiny2, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="--precision"):
        upscale(rgb_u8, model=tiny2, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="--tile"):
        upscale(rgb_u8, model=tiny2, device="cpu", tile=0)
    with pytest.raises(ValueError, match="--scale"):
        upscale(rgb_u8, model=tiny2, device="cpu", scale=4)
    with pytest.raises(TypeError, match="uint8"):
        upscale(rgb_u8.astype(np.float32), model=tiny2, device="cpu")
    with pytest.raises(TypeError, match="not supported"):
        upscale([1, 2, 3], model=tiny2, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            upscale(rgb_u8, model=tiny2, device="cuda")


def test_bf16_autocast_runs_on_cpu_and_stays_close(tiny2: nn.Module, rgb_u8: np.ndarray) -> None:
    chw = torch.from_numpy(rgb_u8).permute(2, 0, 1).float()
    fp32 = upscale(chw, model=tiny2, device="cpu")
    bf16 = upscale(chw, model=tiny2, device="cpu", precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16 - fp32).abs().max() < 4.0  # bf16 keeps 8 mantissa bits: ~1-2 gray levels on this model


def test_auto_device_is_cpu_without_cuda(tiny2: nn.Module) -> None:
    up = Upscaler(tiny2, device="auto")
    assert up.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


# --- issue 15.5: tiles write straight into the uint8 output ----------------------------------------


@pytest.mark.parametrize(
    ("channels", "tile", "passes", "ensemble"),
    [(3, 10, 2, False), (3, 10, 1, False), (3, None, 2, False), (1, 9, 2, False), (4, 10, 2, False), (3, 10, 2, True)],
)
def test_uint8_results_are_the_rounded_float_output(
    tiny2: nn.Module, rgb_u8: np.ndarray, channels: int, tile: int | None, passes: int, ensemble: bool
) -> None:
    """Rounding each tile as it is written gives exactly what rounding the whole float output gives."""
    image = {1: rgb_u8[..., 1], 3: rgb_u8, 4: np.dstack([rgb_u8, rgb_u8[..., 2]])}[channels]
    up = Upscaler(tiny2, device="cpu", tile=tile, tile_passes=passes, self_ensemble=ensemble)
    rgb = torch.from_numpy(np.atleast_3d(image)[..., :3].copy()).permute(2, 0, 1).float()[None]
    sr = up.upscale_tensor(rgb.expand(-1, 3, -1, -1) if channels == 1 else rgb)
    expected = quantise(sr.mean(dim=1, keepdim=True) if channels == 1 else sr)[0].permute(1, 2, 0).numpy()
    out = up(image)
    assert out.dtype == np.uint8 and out.shape[:2] == (42, 66)
    assert np.array_equal(np.atleast_3d(out)[..., :3], expected.astype(np.uint8))
    if channels == 4:
        alpha = quantise(imresize(torch.from_numpy(image[..., 3]).float()[None, None], scale=2))[0, 0].numpy()
        assert np.array_equal(out[..., 3], alpha.astype(np.uint8))


@pytest.mark.slow
def test_tiled_upscale_memory_grows_with_the_uint8_output_not_a_float_one() -> None:
    """Peak RSS per extra output pixel (two image sizes, fresh processes): ~4 bytes (uint8 RGB out + the float
    input), where holding the float32 output took ~37."""
    import sys

    from conftest import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from peak_rss import upscale_peak_rss

    small, big = 256, 768
    runs = {side: upscale_peak_rss("drn_tiny", 4, size=(side, side), tile=64, tile_passes=1) for side in (small, big)}
    extra_pixels = (big * 4) ** 2 - (small * 4) ** 2
    per_pixel = (runs[big].call_bytes - runs[small].call_bytes) / extra_pixels
    assert per_pixel < 10, f"{per_pixel:.1f} bytes per output pixel"


# --- issue 21: PIL images keep their facts (orientation, grey + alpha, palette transparency, animations) -----


def test_pil_exif_orientation_is_applied_and_not_carried(tmp_path, tiny2: nn.Module) -> None:
    """A JPEG stored sideways (EXIF orientation 8): upscaled upright, and the result carries no orientation tag."""
    from PIL import ExifTags, ImageOps

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8
    Image.fromarray(skdata.chelsea()[50:66, 100:124]).save(tmp_path / "s.jpg", exif=exif.tobytes())
    sideways = Image.open(tmp_path / "s.jpg")
    out = upscale(sideways, model=tiny2, device="cpu")
    assert out.size == (32, 48) and ExifTags.Base.Orientation not in out.getexif()
    upright = np.asarray(ImageOps.exif_transpose(sideways))
    assert np.array_equal(np.asarray(out), upscale(upright, model=tiny2, device="cpu"))


def test_grey_alpha_and_palette_transparency_keep_their_kind(tiny2: nn.Module, rgb_u8: np.ndarray) -> None:
    """LA stays LA (before: RGBA), a palette or grey image with a transparent colour gains alpha (before: RGB)."""
    grey, alpha = rgb_u8[..., 1].copy(), np.tile(np.linspace(0, 255, 33, dtype=np.uint8), (21, 1))
    out = upscale(Image.fromarray(np.dstack([grey, alpha]), mode="LA"), model=tiny2, device="cpu")
    assert out.mode == "LA" and out.size == (66, 42)
    assert np.array_equal(np.asarray(out)[..., 0], upscale(grey, model=tiny2, device="cpu"))
    rgba = upscale(np.dstack([rgb_u8, alpha]), model=tiny2, device="cpu")
    assert np.array_equal(np.asarray(out)[..., 1], rgba[..., 3])  # alpha upscaled as RGBA's is
    palette = Image.fromarray(rgb_u8).quantize(8)
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    assert upscale(palette, model=tiny2, device="cpu").mode == "RGBA"
    keyed = Image.fromarray(grey)
    keyed.info["transparency"] = int(grey[0, 0])
    assert upscale(keyed, model=tiny2, device="cpu").mode == "LA"


def test_animated_pil_image_warns_and_upscales_its_current_frame(tmp_path, tiny2: nn.Module) -> None:
    frames = [Image.fromarray(skdata.coffee()[100 + 8 * i : 116 + 8 * i, 200:220]) for i in range(3)]
    frames[0].save(tmp_path / "a.png", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match=r"^animated image: only frame 1 of 3 is upscaled$"):
        out = upscale(Image.open(tmp_path / "a.png"), model=tiny2, device="cpu")
    assert np.array_equal(np.asarray(out), upscale(np.asarray(frames[0]), model=tiny2, device="cpu"))
