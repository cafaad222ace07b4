"""Weight files: the authors' format (`DRNS4x.pt` + `DRNS4x_dual_model.pt`) and our checkpoints, read without running pickles."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from torch import Tensor, nn

from drn_lightning.files import atomic_write
from drn_lightning.models.drn import DRN, SUPPORTED_SCALES, build_duals
from drn_lightning.models.variants import describe, variant_name
from drn_lightning.options import ExpectedError

# Our files' SHA-256 of their tensors: a top-level key of our checkpoints, or an entry of the authors' format's state
# dict `_metadata` (which `load_state_dict` reads by module prefix only, so their strict loader sees the usual keys).
DIGEST_KEY = "drn_lightning_digest"
# Our writers' mark, beside the digest and also in the state dict's `_metadata` (kept when a tool re-saves the dict):
# a marked file without its digest is refused unless allow_unverified; unmarked files (the authors') load unchecked.
WRITER_KEY = "drn_lightning_writer"
log = logging.getLogger(__name__)
StrPath = str | os.PathLike[str]
Loaded = tuple[DRN, nn.ModuleList | None, dict[str, Any]]  # (primal, duals or None, info: variant, scale, sizes)


class CheckpointError(ExpectedError, ValueError):
    """A weights file that cannot be used; the message names the file and what was wrong."""


def tensor_digest(obj: Any) -> str:
    """SHA-256 of every tensor's path, dtype, shape and bytes (but a top-level DIGEST_KEY): torch.load checks no CRC."""
    found: list[tuple[str, Tensor]] = []

    def walk(node: Any, name: str) -> None:
        if isinstance(node, Tensor):
            found.append((name, node))
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if name or key != DIGEST_KEY:
                    walk(value, f"{name}/{key!r}")
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, f"{name}/{index}")

    walk(obj, "")
    digest = hashlib.sha256()
    for name, tensor in sorted(found, key=lambda item: item[0]):
        t = tensor.detach().cpu()
        t = (t if t.layout == torch.strided else t.to_dense()).contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)  # a memoryview: no copy
    return digest.hexdigest()


def with_digest(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of a checkpoint dict with the digest of its tensors and our mark (checked by `safe_load`)."""
    metadata = getattr(checkpoint.get("state_dict"), "_metadata", None)
    if isinstance(metadata, dict):
        metadata[WRITER_KEY] = 1
    return {**checkpoint, DIGEST_KEY: {"sha256": tensor_digest(checkpoint)}, WRITER_KEY: 1}


def _verify_digest(obj: Any, path: StrPath, allow_unverified: bool = False) -> None:
    """Compare each digest our writers stored with the tensors loaded; a file they marked must have one."""
    for part in obj if isinstance(obj, list) else [obj]:  # the authors' dual file is a list of state dicts
        if not isinstance(part, Mapping):
            continue
        metadata = [getattr(p, "_metadata", None) or {} for p in (part, part.get("state_dict"))]
        stored = part.get(DIGEST_KEY) or metadata[0].get(DIGEST_KEY)
        if isinstance(stored, Mapping) and stored.get("sha256") != tensor_digest(part):
            raise CheckpointError(
                f"{path}: corrupt: its tensors do not match the SHA-256 digest stored when it was written "
                "(bytes changed on disk or in transfer); restore the file from a good copy"
            )
        if stored is None and any(WRITER_KEY in m for m in [part, *metadata]):
            if not allow_unverified:
                raise CheckpointError(
                    f"{path}: written by drn_lightning but its SHA-256 digest is missing, so damage cannot be ruled "
                    "out; restore it from a good copy, or load it unchecked with allow_unverified=true"
                )
            log.warning("%s: no SHA-256 digest; loaded unchecked (allow_unverified)", path)
    if isinstance(obj, dict):
        obj.pop(DIGEST_KEY, None)
        obj.pop(WRITER_KEY, None)


def check_finite(module: nn.Module, source: StrPath) -> None:
    """Refuse weights holding NaN or Inf (a diverged run): they would upscale to black images without an error."""
    bad = [k for k, v in module.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: non-finite weights (NaN or Inf) in {_some(bad, 3)}; the weights are unusable")


def _some(items: list[str], limit: int) -> str:
    """The first `limit` items and how many more, so an error stays one readable line."""
    return f"{items[:limit]}" + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def safe_load(path: StrPath, *, allow_unverified: bool = False) -> Any:
    """`torch.load` of only tensors and plain containers (path or fsspec URL), digest-checked; errors name the file."""
    path = os.fspath(path)
    fs, where = url_to_fs(path)
    if not fs.isfile(where):
        raise FileNotFoundError(f"{path}: file not found")
    if fs.size(where) == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes)")
    try:
        with fs.open(where, "rb") as handle:
            obj = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ... depending on the damage
        text = str(err)
        if "Unsupported global" in text or "GLOBAL" in text:
            reason = (
                "refused: it references code or objects other than tensors and plain containers; nothing was executed"
            )
        else:
            lines = text.splitlines() or [type(err).__name__]  # an empty message: the error's type
            detail = next((line.strip() for line in lines if "Unsupported operand" in line), lines[0])
            reason = f"not a readable PyTorch file, truncated or corrupt ({type(err).__name__}: {detail[:200]})"
        raise CheckpointError(f"{path}: {reason}") from None
    _verify_digest(obj, path, allow_unverified)
    return obj


def _check_state_dict(obj: Any, path: str, what: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a {what} (a dict of tensors), found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: expected a {what} of tensors; non-tensor entries: {bad[:5]}")
    return dict(obj)


def infer_primal_config(state_dict: Mapping[str, Tensor], source: str = "state_dict") -> dict[str, Any]:
    """Read scale, n_feats and n_blocks off the tensor shapes of a primal state_dict."""
    head = state_dict.get("head.weight")
    if head is None or head.ndim != 4:
        raise CheckpointError(f"{source}: no 'head.weight' conv kernel; this is not a DRN primal state_dict")
    n_feats = int(head.shape[0])
    stages = len({k.split(".")[1] for k in state_dict if k.startswith("down.")})
    scale = 2**stages
    if scale not in SUPPORTED_SCALES:
        raise CheckpointError(f"{source}: found {stages} down blocks (scale {scale}); DRN has 1, 2 or 3")
    n_blocks = len({k.split(".")[2] for k in state_dict if re.match(r"up_blocks\.0\.\d+\.body\.", k)})
    if n_blocks == 0:
        raise CheckpointError(f"{source}: no RCAB blocks under 'up_blocks.0'; this is not a DRN primal state_dict")
    return {"scale": scale, "n_feats": n_feats, "n_blocks": n_blocks, "variant": variant_name(scale, n_feats, n_blocks)}


def _differences(own: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mis-shaped) keys of `given` against `own`: what a strict load would reject."""
    missing, unexpected = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
    return missing, unexpected, [k for k, v in own.items() if k in given and given[k].shape != v.shape]


def network_mismatch(found: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> str | None:
    """`checkpoint: <network>; config: <network>` when two LightningModule state dicts hold different networks."""
    missing, unexpected, reshaped = _differences(expected, found)
    wrong = sorted(missing + unexpected) + reshaped
    if not wrong:
        return None

    def network(state: Mapping[str, Tensor]) -> str:
        primal, duals = split_lightning_state_dict(state)
        try:
            return describe(infer_primal_config(primal)) + ("" if duals else " without dual regressors")
        except CheckpointError:
            return f"not a DRN ({len(state)} tensors)"

    sides = network(found), network(expected)
    detail = f"; differing tensors: {_some(wrong, 3)}" if sides[0] == sides[1] else ""
    return f"checkpoint: {sides[0]}; config: {sides[1]}{detail}"


def _load_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, info: Mapping[str, Any]) -> None:
    """Strict load whose error lists a few missing/unexpected/mis-shaped keys instead of a wall of text."""
    own = module.state_dict()
    missing, unexpected, reshaped = _differences(own, state_dict)
    wrong = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(state_dict[k].shape)}" for k in reshaped]
    problems = (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
    parts = [f"{label}: {_some(items, 5)}" for label, items in problems if items]
    if parts:
        raise CheckpointError(f"{source}: does not match {describe(info)}; " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def primal_from_state_dict(
    obj: Any, source: str = "state_dict", variant: str | None = None, scale: int | None = None
) -> tuple[DRN, dict[str, Any]]:
    """Build the DRN that these weights describe and load them strictly."""
    state_dict = _check_state_dict(obj, source, "primal state_dict")
    info = infer_primal_config(state_dict, source)
    if scale is not None and int(scale) != info["scale"]:
        raise CheckpointError(f"{source}: expected scale x{scale}, found {describe(info)}")
    if variant is not None and variant != info["variant"]:
        expected = variant if scale is None else f"{variant} x{scale}"
        raise CheckpointError(f"{source}: expected {expected}, found {describe(info)}")
    primal = DRN(scale=info["scale"], n_feats=info["n_feats"], n_blocks=info["n_blocks"])
    _load_strict(primal, state_dict, source, info)
    return primal, info


def duals_from_state_dicts(dual_states: Any, source: str, info: Mapping[str, Any]) -> nn.ModuleList:
    """Build and strictly load the dual regressors from the authors' list of state_dicts."""
    if not isinstance(dual_states, (list, tuple)):
        raise CheckpointError(f"{source}: expected a list of dual state_dicts, found {type(dual_states).__name__}")
    duals = build_duals(info["scale"], info["n_feats"])
    if len(dual_states) != len(duals):
        raise CheckpointError(
            f"{source}: expected {len(duals)} dual models for {describe(info)}, found {len(dual_states)}"
        )
    for idx, (dual, state) in enumerate(zip(duals, dual_states)):
        state = _check_state_dict(state, source, f"dual state_dict #{idx}")
        _load_strict(dual, state, f"{source} [dual {idx}]", info)
    return duals


def _atomic_save(obj: Any, path: StrPath) -> None:
    atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def _plain_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """CPU, contiguous copies of the module's tensors; its `_metadata` carries their digest (see DIGEST_KEY)."""
    source = module.state_dict()
    state = OrderedDict((k, v.detach().cpu().contiguous().clone()) for k, v in source.items())
    state._metadata = OrderedDict(getattr(source, "_metadata", {}))  # type: ignore[attr-defined]
    state._metadata.update({DIGEST_KEY: {"sha256": tensor_digest(state)}, WRITER_KEY: 1})  # type: ignore[attr-defined]
    return state


def save_official(
    primal: nn.Module, duals: Iterable[nn.Module] | None, primal_path: StrPath, dual_path: StrPath | None = None
) -> None:
    """Write weights in the authors' format so their `main.py --pre_train ... --pre_train_dual ...` reads them."""
    _atomic_save(_plain_state_dict(primal), primal_path)
    if dual_path is not None:
        if duals is None:
            raise ValueError("dual_path was given but there are no dual models to save")
        _atomic_save([_plain_state_dict(d) for d in duals], dual_path)


def split_lightning_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
    """Split our LightningModule state_dict (`primal.*`, `duals.<i>.*`) into the authors' two structures."""
    primal = {k.removeprefix("primal."): v for k, v in state_dict.items() if k.startswith("primal.")}
    duals: dict[int, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith("duals."):
            index, _, rest = key.removeprefix("duals.").partition(".")
            duals.setdefault(int(index), {})[rest] = value
    return primal, [duals[i] for i in sorted(duals)]


def load_weights(
    path: StrPath,
    dual_path: StrPath | None = None,
    *,
    variant: str | None = None,
    scale: int | None = None,
    allow_unverified: bool = False,
) -> Loaded:
    """Load either the authors' `.pt` pair or one of our Lightning `.ckpt` files, whichever `path` is."""
    obj = safe_load(path, allow_unverified=allow_unverified)
    if not (isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping)):  # the authors' pair
        primal, info = primal_from_state_dict(obj, str(path), variant, scale)
        duals = None if dual_path is None else safe_load(dual_path, allow_unverified=allow_unverified)
        return primal, None if duals is None else duals_from_state_dicts(duals, str(dual_path), info), info
    primal_state, dual_states = split_lightning_state_dict(obj["state_dict"])
    if not primal_state:
        raise CheckpointError(f"{path}: Lightning checkpoint without 'primal.*' weights")
    primal, info = primal_from_state_dict(primal_state, str(path), variant, scale)
    return primal, duals_from_state_dicts(dual_states, str(path), info) if dual_states else None, info


def load_official(
    primal_path: StrPath, dual_path: StrPath | None = None, *, variant: str | None = None, scale: int | None = None
) -> Loaded:
    """`(primal, duals, info)` from the authors' files; `variant`/`scale` turn a silent mix-up into an error naming both."""
    return load_weights(primal_path, dual_path, variant=variant, scale=scale)


def official_to_checkpoint(
    primal: nn.Module, duals: nn.ModuleList | None, info: Mapping[str, Any], ckpt_path: StrPath
) -> None:
    """Write a minimal Lightning-style checkpoint (weights + hyper-parameters) that our tools load."""
    networks = nn.ModuleDict({"primal": primal, "duals": nn.ModuleList(duals or [])})  # DRNLitModule's keys
    state = _plain_state_dict(networks)
    state._metadata = OrderedDict()  # type: ignore[attr-defined]  # the checkpoint's digest is top-level (with_digest)
    hparams = {k: info[k] for k in ("variant", "scale", "n_feats", "n_blocks")}
    checkpoint = {"state_dict": state, "hyper_parameters": {"drn": hparams}, "epoch": 0, "global_step": 0}
    _atomic_save(with_digest(checkpoint), ckpt_path)
