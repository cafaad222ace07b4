"""Upscale PIL / NumPy / tensor images with a trained DRN into the same kind, with precision, tiles, self-ensemble."""

from __future__ import annotations

import contextlib
import os
import warnings
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from drn_lightning.data.io import sixteen_to_eight
from drn_lightning.models.drn import ChannelAttention
from drn_lightning.models.weights import check_finite, load_weights
from drn_lightning.ops.color import quantize
from drn_lightning.ops.imresize import imresize
from drn_lightning.ops.tiling import DEFAULT_TILE_OVERLAP, TensorFn, TileBox, self_ensemble_forward, tiled_forward
from drn_lightning.options import integer

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TILE_PASSES = 2  # pass 2 gates with pass 1's image-wide means: 0.05 gray levels off whole-image (measured)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" into cuda when available (else cpu) and fail early for a device that is not there."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} (--device) is not a valid device; use auto, cpu or cuda") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} (--device) was requested but CUDA is not available here; use cpu")
    return dev


class SharedChannelStats:
    """Sums each `ChannelAttention` input over the tiles' cores (a partition), so later passes gate with image-wide means."""

    def __init__(self, model: nn.Module, height: int, width: int) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, ChannelAttention)]
        self.height, self.width = height, width
        self.box: TileBox | None = None
        self._sums: dict[int, tuple[Tensor, int]] = {}  # layer -> (sum over the cores so far, pixels in the image)
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
        self._sums = {}

    def end_pass(self) -> None:
        """Turn this pass's summed cores into image-wide means for the next pass."""
        self._means = {i: (total / pixels).float()[..., None, None] for i, (total, pixels) in self._sums.items()}

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
        part = x[..., top * ratio : bottom * ratio, left * ratio : right * ratio].sum(dim=(2, 3), dtype=torch.float64)
        previous = self._sums.get(idx)
        self._sums[idx] = (part if previous is None else previous[0] + part, self.height * self.width * ratio**2)
        if self._means is None:
            return None
        gate = module.conv_du(self._means[idx].to(device=x.device, dtype=x.dtype))  # type: ignore[operator]
        return x * gate


class Upscaler:
    """A model put in eval mode on `device` (channels_last, in place) with its inference settings; call it on images."""

    def __init__(
        self,
        model: nn.Module,
        *,
        scale: int | None = None,
        device: str | torch.device = "auto",
        precision: str = "fp32",
        tile: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        tile_passes: int = DEFAULT_TILE_PASSES,
        self_ensemble: bool = False,
        info: dict[str, Any] | None = None,
    ) -> None:
        model_scale = getattr(model, "scale", None)
        if scale is None and model_scale is None:
            raise ValueError("scale=... is required for a model without a `scale` attribute")
        if scale is not None and model_scale is not None and int(scale) != int(model_scale):
            raise ValueError(f"scale={scale} (--scale) does not match the model, which upscales x{model_scale}")
        self.scale = int(scale if scale is not None else model_scale)  # type: ignore[arg-type]
        sizes = [(tile_overlap, "tile_overlap", 0), (tile_passes, "tile_passes", 1)]
        for value, name, minimum in [(tile, "tile", 1), *sizes] if tile is not None else sizes:
            try:
                integer(value, name, minimum)
            except ValueError as err:
                raise ValueError(f"{err} (--{name.replace('_', '-')})") from None
        self.device, self.precision = resolve_device(device), str(precision)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} (--precision) is unknown; choose one of {list(PRECISIONS)}")
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision='fp16' (--precision fp16) needs CUDA; use bf16 or fp32 on {self.device.type}")
        if self.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bf16' (--precision bf16) is not supported by this GPU; use fp16 or fp32")
        self.tile, self.tile_overlap, self.tile_passes = tile, tile_overlap, tile_passes
        self.self_ensemble = bool(self_ensemble)
        self.info = {"scale": self.scale, **(info or {})}
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._has_attention = any(isinstance(m, ChannelAttention) for m in self.model.modules())

    def _run(self, lr: Tensor, out_device: torch.device) -> Tensor:
        """One model call on a (sub)image: to the device, channels_last, float32 result back on `out_device`."""
        x = lr.to(self.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        with contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype):
            sr = self.model(x)
        sr = sr[-1] if isinstance(sr, (list, tuple)) else sr  # DRN returns its levels coarse to fine
        return sr.float().to(out_device).contiguous()

    def _tiled(self, lr: Tensor, out: Tensor | None = None, convert: TensorFn | None = None) -> Tensor:
        run = partial(self._run, out_device=lr.device)
        height, width = int(lr.shape[-2]), int(lr.shape[-1])
        tiles = partial(tiled_forward, run, lr, self.scale, self.tile, self.tile_overlap, out=out, convert=convert)
        if self.tile is None or self.tile >= max(height, width) or not self._has_attention or self.tile_passes == 1:
            return tiles()
        with SharedChannelStats(self.model, height, width) as stats:
            for _ in range(self.tile_passes):
                stats.start_pass()
                result = tiles(on_tile=stats.on_tile)
                stats.end_pass()
        return result

    @torch.inference_mode()
    def upscale_tensor(self, lr: Tensor, *, out: Tensor | None = None, convert: TensorFn | None = None) -> Tensor:
        """(N, 3, H, W) float 0-255 -> unclamped float32; `out` gets each tile via `convert`: memory for one tile."""
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got {tuple(lr.shape)}")
        if not self.self_ensemble:
            return self._tiled(lr, out, convert)
        sr = self_ensemble_forward(self._tiled, lr)
        return sr if out is None else out.copy_(sr if convert is None else convert(sr))

    def __call__(self, image: Any) -> Any:
        """Super-resolve a PIL image, an HxW[xC] uint8 array or a (C,H,W)/(N,C,H,W) tensor; returns the same kind."""
        if isinstance(image, Image.Image):
            return _upscale_pil(self, image)
        if isinstance(image, np.ndarray):
            return _upscale_numpy(self, image)
        if isinstance(image, Tensor):
            return _upscale_torch(self, image)
        raise TypeError(
            f"image of type {type(image).__name__} is not supported; pass a PIL.Image, an HxW[x3] uint8 "
            "NumPy array or a (C,H,W)/(N,C,H,W) float tensor in 0-255"
        )


def _upscale_channels(up: Upscaler, batch: Tensor, out: Tensor | None = None) -> Tensor:
    """Float (N, C, H, W) -> float SR, or uint8 tile by tile into `out`; the net sees RGB (grey x3, alpha: bicubic)."""
    channels = int(batch.shape[1])
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"image has {channels} channels; expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)")
    color = 1 if channels < 3 else 3
    rgb = batch[:, :color].expand(-1, 3, -1, -1)

    def to_channels(sr: Tensor) -> Tensor:
        return sr.mean(dim=1, keepdim=True) if color == 1 else sr

    if out is None:
        sr = to_channels(up.upscale_tensor(rgb))
        return torch.cat((sr, imresize(batch[:, color:], scale=up.scale)), dim=1) if channels > color else sr
    up.upscale_tensor(rgb, out=out[:, :color], convert=lambda sr: quantize(to_channels(sr)).to(torch.uint8))
    if channels > color:
        out[:, color:] = quantize(imresize(batch[:, color:], scale=up.scale)).to(torch.uint8)
    return out


def _upscale_numpy(up: Upscaler, image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise TypeError(f"NumPy images must be uint8 (0-255), got dtype {image.dtype}")
    hwc = image[..., None] if image.ndim == 2 else image
    if hwc.ndim != 3 or hwc.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"NumPy images must be HxW or HxWxC with C in 1-4, got shape {image.shape}")
    hwc = np.require(hwc, requirements=("C", "W"))  # PIL-backed arrays are read-only; torch wants writable memory
    height, width, channels = hwc.shape
    out = np.empty((height * up.scale, width * up.scale, channels), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)[None].float()
    _upscale_channels(up, chw, torch.from_numpy(out).permute(2, 0, 1)[None])
    return np.ascontiguousarray(out[..., 0]) if image.ndim == 2 else out


def _upscale_pil(up: Upscaler, image: Image.Image) -> Image.Image:
    """Upright as its EXIF says; grey stays grey, alpha (or a transparent colour) is kept; animations warn."""
    if (frames := getattr(image, "n_frames", 1)) > 1:
        warnings.warn(f"animated image: only frame {image.tell() + 1} of {frames} is upscaled", stacklevel=3)
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I"):  # 16/32-bit grey, which Pillow's "L" conversion would clip
        array, target = sixteen_to_eight(np.asarray(image).astype(np.int64).clip(0, 65535)), "L"
    else:
        alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        target = ("LA" if alpha else "L") if mode in ("L", "1", "F", "LA", "La") else "RGBA" if alpha else "RGB"
        array = np.asarray(image if mode == target else image.convert(target), dtype=np.uint8)
    return Image.fromarray(_upscale_numpy(up, array), mode=target)


def _upscale_torch(up: Upscaler, tensor: Tensor) -> Tensor:
    single = tensor.dim() == 3
    if tensor.dim() not in (3, 4):
        raise ValueError(f"tensor images must be (C, H, W) or (N, C, H, W), got shape {tuple(tensor.shape)}")
    batch = tensor[None] if single else tensor
    if tensor.dtype == torch.uint8:
        n, channels, height, width = batch.shape
        out = _upscale_channels(up, batch.float(), batch.new_empty((n, channels, height * up.scale, width * up.scale)))
    elif tensor.is_floating_point():
        out = _upscale_channels(up, batch.float()).to(tensor.dtype)
    else:
        raise TypeError(f"tensor images must be floating point (0-255) or uint8, got {tensor.dtype}")
    if out.is_inference():
        out = out.clone()  # a normal tensor, so callers may modify it in place outside inference mode
    return out[0] if single else out


def load_upscaler(
    weights: str | os.PathLike[str],
    device: str | torch.device = "auto",
    precision: str = "fp32",
    *,
    scale: int | None = None,
    allow_unverified: bool = False,
    **settings: Any,
) -> Upscaler:
    """An `Upscaler` for the authors' `.pt` or our `.ckpt`; x8 weights for a `scale=4` job fail, NaN weights too."""
    primal, _, info = load_weights(weights, scale=scale, allow_unverified=allow_unverified)
    check_finite(primal, weights)
    info = {**info, "weights": str(weights)}
    return Upscaler(primal, scale=info["scale"], device=device, precision=precision, info=info, **settings)


def upscale(
    image: Any, weights: str | os.PathLike[str] | None = None, *, model: nn.Module | None = None, **settings: Any
) -> Any:
    """One image in, the same kind out (float tensors unrounded); `weights` load on every call: reuse an `Upscaler`."""
    if weights is not None and model is None:
        return load_upscaler(weights, **settings)(image)
    if model is not None and weights is None:
        return Upscaler(model, **settings)(image)
    raise ValueError("give exactly one of weights=PATH (.pt or .ckpt) or model=<nn.Module>")
