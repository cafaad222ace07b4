"""Upscale images with a trained DRN: PIL / NumPy / tensor in, the same kind out.

`Upscaler` keeps the network on its device and applies precision, tiling and self-ensemble;
`upscale()` is the one-call form. Tiling keeps memory bounded by the tile; because every RCAB
gates its channels with a *global* average, tiles also share those averages across the image
(`tile_passes`, see `SharedChannelStats`) so tiled output matches whole-image output.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from drn_lightning.checks import integer
from drn_lightning.data.io import sixteen_to_eight
from drn_lightning.models.drn import ChannelAttention
from drn_lightning.models.official import check_finite, load_weights
from drn_lightning.ops.tiling import DEFAULT_TILE_OVERLAP, self_ensemble_forward, tiled_forward
from drn_lightning.tile_stats import SharedChannelStats

__all__ = [
    "DEFAULT_TILE_OVERLAP",
    "DEFAULT_TILE_PASSES",
    "PRECISIONS",
    "SharedChannelStats",
    "Upscaler",
    "load_upscaler",
    "resolve_device",
    "upscale",
]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Pass 1 gathers each channel-attention layer's image-wide mean from the tiles, pass 2 uses it;
# measured to bring tiled DRN-S within 0.05 gray levels of whole-image output (docs/inference.md).
DEFAULT_TILE_PASSES = 2

try:  # Pillow is a hard dependency, but keep the tensor path importable without it.
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover
    _PILImage = None  # type: ignore[assignment]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" into cuda when available (else cpu) and fail early for a device that is not there."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device={device!r} (--device) is not a valid device; use auto, cpu or cuda") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} (--device) was requested but CUDA is not available here; use cpu")
    return dev


def _check_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} (--precision) is unknown; choose one of {list(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision='fp16' (--precision fp16) needs a CUDA device, but the device is {device.type}; "
            "use --precision bf16 or fp32 on CPU"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16' (--precision bf16) is not supported by this GPU; use fp16 or fp32")
    return precision


def _final_output(out: Any) -> Tensor:
    """DRN returns images coarse to fine; a plain SR module returns one tensor."""
    if isinstance(out, (list, tuple)):
        return out[-1]
    return out


class Upscaler:
    """A model placed on a device with its inference settings; call it on images to super-resolve them.

    The model is put in eval mode and moved to `device` (channels_last) in place.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        scale: int | None = None,
        device: str | torch.device = "auto",
        precision: Precision | str = "fp32",
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
        self.device = resolve_device(device)
        self.precision = _check_precision(str(precision), self.device)
        self.tile, self.tile_overlap, self.tile_passes = tile, tile_overlap, tile_passes
        self.self_ensemble = bool(self_ensemble)
        self.info = dict(info or {})
        self.info.setdefault("scale", self.scale)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._has_attention = any(isinstance(m, ChannelAttention) for m in self.model.modules())

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def _run(self, lr: Tensor, out_device: torch.device) -> Tensor:
        """One model call on a (sub)image: to the device, channels_last, float32 result back on `out_device`."""
        x = lr.to(self.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            sr = _final_output(self.model(x))
        return sr.float().to(out_device).contiguous()

    def _tiled(
        self, lr: Tensor, out: Tensor | None = None, convert: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        run = partial(self._run, out_device=lr.device)
        height, width = int(lr.shape[-2]), int(lr.shape[-1])
        tiling = self.tile is not None and (self.tile < height or self.tile < width)
        tiles = partial(tiled_forward, run, lr, self.scale, self.tile, self.tile_overlap, out=out, convert=convert)
        if not tiling or not self._has_attention or self.tile_passes == 1:
            return tiles()
        with SharedChannelStats(self.model, height, width) as stats:
            for _ in range(self.tile_passes):
                stats.start_pass()
                result = tiles(on_tile=stats.on_tile)
                stats.end_pass()
        return result

    @torch.inference_mode()
    def upscale_tensor(
        self, lr: Tensor, *, out: Tensor | None = None, convert: Callable[[Tensor], Tensor] | None = None
    ) -> Tensor:
        """(N, 3, H, W) float 0-255 -> (N, 3, H*s, W*s) float32 0-255, unclamped, on the input's device.

        With `out` (preallocated, any dtype, e.g. uint8) each tile goes through `convert` into `out`, which is
        returned: memory then holds one tile's float output, not the image's (self-ensemble still averages
        whole float outputs).
        """
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got {tuple(lr.shape)}")
        if not self.self_ensemble:
            return self._tiled(lr, out, convert)
        sr = self_ensemble_forward(self._tiled, lr)
        return sr if out is None else out.copy_(sr if convert is None else convert(sr))

    def __call__(self, image: Any) -> Any:
        """Super-resolve a PIL image, an HxW[xC] uint8 array or a (C,H,W)/(N,C,H,W) tensor; returns the same kind."""
        return _dispatch(self, image)


# --- input/output conversions -------------------------------------------------------------------


def _as_rgb_batch(chw: Tensor, what: str) -> tuple[Tensor, int]:
    """(N, C, H, W) with C in {1, 3, 4} -> (N, 3, H, W) colour batch and the original channel count."""
    channels = int(chw.shape[1])
    if channels not in (1, 3, 4):
        raise ValueError(f"{what} has {channels} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    if channels == 1:
        return chw.expand(-1, 3, -1, -1), channels
    return chw[:, :3], channels


def _restore_channels(sr: Tensor, lr: Tensor, channels: int, scale: int) -> Tensor:
    """Grey in -> mean of the three output channels; RGBA in -> alpha upscaled with MATLAB bicubic."""
    if channels == 1:
        return sr.mean(dim=1, keepdim=True)
    if channels == 4:
        return torch.cat((sr, _upscaled_alpha(lr, scale, sr.device)), dim=1)
    return sr


def _upscaled_alpha(lr: Tensor, scale: int, device: torch.device) -> Tensor:
    """The alpha channel of an RGBA batch, MATLAB-bicubic upscaled (the network sees RGB only)."""
    from drn_lightning.ops.imresize import imresize

    return imresize(lr[:, 3:4].to(device, torch.float32), scale=scale)


def _to_uint8(x: Tensor) -> Tensor:
    return torch.floor(x.clamp(0.0, 255.0) + 0.5).to(torch.uint8)


def _upscale_chw(up: Upscaler, batch: Tensor) -> Tensor:
    """Float (N, C, H, W) 0-255 with any supported C -> float32 (N, C, H*s, W*s)."""
    rgb, channels = _as_rgb_batch(batch, "image")
    sr = up.upscale_tensor(rgb)
    return _restore_channels(sr, batch, channels, up.scale)


def _upscale_into_uint8(up: Upscaler, batch: Tensor, out: Tensor) -> Tensor:
    """Float (N, C, H, W) 0-255 -> `out`, uint8 (N, C, H*s, W*s) of any strides, rounded tile by tile (bounded memory)."""
    rgb, channels = _as_rgb_batch(batch, "image")
    if channels == 1:  # grey: the mean of the three output channels, as `_restore_channels`
        up.upscale_tensor(rgb, out=out, convert=lambda sr: _to_uint8(sr.mean(dim=1, keepdim=True)))
        return out
    up.upscale_tensor(rgb, out=out[:, :3], convert=_to_uint8)
    if channels == 4:
        out[:, 3:] = _to_uint8(_upscaled_alpha(batch, up.scale, out.device))
    return out


def _dispatch(up: Upscaler, image: Any) -> Any:
    if _PILImage is not None and isinstance(image, _PILImage.Image):
        return _upscale_pil(up, image)
    if isinstance(image, np.ndarray):
        return _upscale_numpy(up, image)
    if isinstance(image, Tensor):
        return _upscale_torch(up, image)
    raise TypeError(
        f"image of type {type(image).__name__} is not supported; pass a PIL.Image, an HxW[x3] uint8 "
        "NumPy array or a (C,H,W)/(N,C,H,W) float tensor in 0-255"
    )


def _upscale_numpy(up: Upscaler, array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise TypeError(f"NumPy images must be uint8 (0-255), got dtype {array.dtype}")
    was_2d = array.ndim == 2
    if was_2d:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"NumPy images must be HxW, HxWx1, HxWx3 or HxWx4, got shape {array.shape}")
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")  # PIL-backed arrays are read-only; torch wants writable memory
    chw = torch.from_numpy(array).permute(2, 0, 1)[None].float()
    height, width, channels = array.shape
    out = np.empty((height * up.scale, width * up.scale, channels), dtype=np.uint8)
    _upscale_into_uint8(up, chw, torch.from_numpy(out).permute(2, 0, 1)[None])
    return np.ascontiguousarray(out[..., 0]) if was_2d else out


def _upscale_pil(up: Upscaler, image: Any) -> Any:
    mode = image.mode
    if mode.startswith("I"):
        grey = sixteen_to_eight(np.asarray(image).astype(np.int64).clip(0, 65535))  # Pillow's "L" would clip
        return _PILImage.fromarray(_upscale_numpy(up, grey), mode="L")
    if mode in ("L", "1", "F"):
        return _PILImage.fromarray(_upscale_numpy(up, np.asarray(image.convert("L"), dtype=np.uint8)), mode="L")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        array = np.asarray(image.convert("RGBA"), dtype=np.uint8)
        return _PILImage.fromarray(_upscale_numpy(up, array), mode="RGBA")
    array = np.asarray(image if mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    return _PILImage.fromarray(_upscale_numpy(up, array), mode="RGB")


def _upscale_torch(up: Upscaler, tensor: Tensor) -> Tensor:
    single = tensor.dim() == 3
    if tensor.dim() not in (3, 4):
        raise ValueError(f"tensor images must be (C, H, W) or (N, C, H, W), got shape {tuple(tensor.shape)}")
    batch = tensor[None] if single else tensor
    if tensor.dtype == torch.uint8:
        n, channels, height, width = batch.shape
        out: Tensor = batch.new_empty((n, channels, height * up.scale, width * up.scale))
        _upscale_into_uint8(up, batch.float(), out)
    elif tensor.is_floating_point():
        out = _upscale_chw(up, batch.float()).to(tensor.dtype)
    else:
        raise TypeError(f"tensor images must be floating point (0-255) or uint8, got {tensor.dtype}")
    if out.is_inference():
        out = out.clone()  # a normal tensor, so callers may modify it in place outside inference mode
    return out[0] if single else out


# --- loading and the one-call API ---------------------------------------------------------------


def load_upscaler(
    weights: str | os.PathLike[str],
    device: str | torch.device = "auto",
    precision: Precision | str = "fp32",
    *,
    scale: int | None = None,
    tile: int | None = None,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    tile_passes: int = DEFAULT_TILE_PASSES,
    self_ensemble: bool = False,
) -> Upscaler:
    """Build an `Upscaler` from the authors' `.pt` or our `.ckpt`; variant and scale come from the tensors.

    `scale` asserts the expected factor, so x8 weights given for a x4 job fail with both named; NaN/Inf weights
    (which would give black images) raise `CheckpointError` naming the file.
    """
    primal, _, info = load_weights(weights, scale=scale)
    check_finite(primal, weights)
    info = {**info, "weights": str(weights)}
    return Upscaler(
        primal,
        scale=info["scale"],
        device=device,
        precision=precision,
        tile=tile,
        tile_overlap=tile_overlap,
        tile_passes=tile_passes,
        self_ensemble=self_ensemble,
        info=info,
    )


def upscale(
    image: Any,
    weights: str | os.PathLike[str] | None = None,
    *,
    model: nn.Module | None = None,
    scale: int | None = None,
    tile: int | None = None,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    tile_passes: int = DEFAULT_TILE_PASSES,
    self_ensemble: bool = False,
    device: str | torch.device = "auto",
    precision: Precision | str = "fp32",
) -> Any:
    """Super-resolve one image (PIL, uint8 NumPy or float 0-255 tensor) and return the same kind.

    PIL and NumPy results are rounded to uint8; a float tensor comes back float (0-255, neither
    clamped nor rounded) so callers can score or post-process it. Build an `Upscaler` once instead
    when processing many images: this function loads `weights` on every call.
    """
    if (weights is None) == (model is None):
        raise ValueError("give exactly one of weights=PATH (.pt or .ckpt) or model=<nn.Module>")
    settings: dict[str, Any] = {
        "device": device,
        "precision": precision,
        "tile": tile,
        "tile_overlap": tile_overlap,
        "tile_passes": tile_passes,
        "self_ensemble": self_ensemble,
    }
    if weights is not None:
        up = load_upscaler(weights, scale=scale, **settings)
    else:
        assert model is not None
        up = Upscaler(model, scale=scale, **settings)
    return up(image)
