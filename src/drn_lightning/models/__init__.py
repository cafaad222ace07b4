"""Plain `torch.nn` DRN networks and the authors' weight format; nothing here imports Lightning."""

from drn_lightning.models.drn import DRN, RCAB, DownBlock, DualRegressor, MeanShift, build_duals, check_scale, num_stages
from drn_lightning.models.official import (
    VARIANTS,
    CheckpointError,
    build_drn,
    infer_primal_config,
    load_official,
    load_weights,
    official_to_checkpoint,
    safe_load,
    save_official,
    split_lightning_state_dict,
    variant_name,
    variant_size,
)

__all__ = [
    "DRN",
    "RCAB",
    "VARIANTS",
    "CheckpointError",
    "DownBlock",
    "DualRegressor",
    "MeanShift",
    "build_drn",
    "build_duals",
    "check_scale",
    "infer_primal_config",
    "load_official",
    "load_weights",
    "num_stages",
    "official_to_checkpoint",
    "safe_load",
    "save_official",
    "split_lightning_state_dict",
    "variant_name",
    "variant_size",
]
