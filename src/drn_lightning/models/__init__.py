"""Plain `torch.nn` DRN networks, the paper's variants and weight files; nothing here imports Lightning."""

from drn_lightning.models.drn import DRN, SUPPORTED_SCALES, build_duals, check_scale
from drn_lightning.models.variants import VARIANTS, build_drn, build_primal, describe
from drn_lightning.models.weights import (
    CheckpointError,
    check_finite,
    load_official,
    load_weights,
    official_to_checkpoint,
    safe_load,
    save_official,
)  # fmt: skip

__all__ = [
    "DRN", "SUPPORTED_SCALES", "VARIANTS", "CheckpointError", "build_drn", "build_duals", "build_primal",
    "check_finite", "check_scale", "describe", "load_official", "load_weights", "official_to_checkpoint", "safe_load",
    "save_official",
]  # fmt: skip
