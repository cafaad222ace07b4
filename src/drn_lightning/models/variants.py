"""The paper's DRN variants (DRN-S, DRN-L at x4 and x8) and the builders that size a network by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from drn_lightning.models.drn import DRN, check_scale
from drn_lightning.options import OptionError

# The paper's sizes (n_feats, n_blocks) per variant and scale; `drn_tiny` is our small CPU demo model.
VARIANTS: dict[str, dict[int, tuple[int, int]]] = {
    "drn_s": {4: (16, 30), 8: (8, 30)},
    "drn_l": {4: (20, 40), 8: (10, 36)},
    "drn_tiny": {2: (8, 4), 4: (8, 4), 8: (4, 4)},
}


def variant_name(scale: int, n_feats: int, n_blocks: int) -> str:
    """Name of the paper variant with these sizes, or a descriptive `custom_...` name."""
    for name, sizes in VARIANTS.items():
        if sizes.get(scale) == (n_feats, n_blocks):
            return name
    return f"custom_f{n_feats}_b{n_blocks}"


def build_primal(
    variant: str = "drn_s", scale: int = 4, n_feats: int | None = None, n_blocks: int | None = None, **kwargs: Any
) -> DRN:
    """The primal of a named variant at the paper's size for `scale`; `n_feats`/`n_blocks` override it, `kwargs` go to DRN."""
    if n_feats is None or n_blocks is None:
        check_scale(scale)
        if variant not in VARIANTS:
            raise OptionError("variant", variant, f"unknown; choose one of {sorted(VARIANTS)}")
        if scale not in VARIANTS[variant]:
            defined = {k: sorted(v) for k, v in VARIANTS.items()}
            raise OptionError(
                "variant", variant, f"not defined at scale={scale}; defined: {defined} (or give n_feats and n_blocks)"
            )
        n_feats = VARIANTS[variant][scale][0] if n_feats is None else n_feats
        n_blocks = VARIANTS[variant][scale][1] if n_blocks is None else n_blocks
    return DRN(scale=scale, n_feats=int(n_feats), n_blocks=int(n_blocks), **kwargs)


def build_drn(
    variant: str = "drn_s",
    scale: int = 4,
    n_feats: int | None = None,
    n_blocks: int | None = None,
    dual: bool = True,
    **kwargs: Any,
) -> tuple[DRN, nn.ModuleList | None]:
    """Primal and dual networks of a named variant (see `build_primal`)."""
    primal = build_primal(variant, scale, n_feats, n_blocks, **kwargs)
    return primal, (primal.build_duals() if dual else None)


def describe(info: Mapping[str, Any]) -> str:
    """`drn_s x4 (n_feats=16, n_blocks=30)`: how messages name a network."""
    return f"{info['variant']} x{info['scale']} (n_feats={info['n_feats']}, n_blocks={info['n_blocks']})"
