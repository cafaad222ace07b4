"""SR data: image IO, folder datasets, the mixed paired/unpaired sampler, demo photos, DataModule.

Never imports model code. The DataModules (which pull in Lightning) load lazily on first access,
so ``from drn_lightning.data import read_image`` stays light; ``drn_lightning.data.SRDataModule``
still resolves for Hydra's ``_target_``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drn_lightning.data.datasets import (
    BenchmarkDataset,
    KeyedConcatDataset,
    LRCache,
    PairedDataset,
    UnpairedDataset,
    augment_arrays,
    crop_pyramid,
    default_lr_cache_dir,
    mod_crop,
    pyramid_factors,
    to_tensor,
)
from drn_lightning.data.demo import (
    DEMO_GREYSCALE,
    DEMO_TRAIN,
    DEMO_VAL,
    default_demo_root,
    load_demo_image,
    materialize_demo,
)
from drn_lightning.data.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    list_images,
    read_image,
    read_image_size,
    set_max_image_pixels,
)
from drn_lightning.data.samplers import MixedBatchSampler, sample_seed

if TYPE_CHECKING:
    from drn_lightning.data.datamodule import DemoDataModule, ShardSampler, SRDataModule

__all__ = [
    "DEMO_GREYSCALE",
    "DEMO_TRAIN",
    "DEMO_VAL",
    "IMAGE_EXTENSIONS",
    "BenchmarkDataset",
    "DemoDataModule",
    "ImageReadError",
    "KeyedConcatDataset",
    "LRCache",
    "MixedBatchSampler",
    "PairedDataset",
    "SRDataModule",
    "ShardSampler",
    "UnpairedDataset",
    "augment_arrays",
    "crop_pyramid",
    "default_demo_root",
    "default_lr_cache_dir",
    "list_images",
    "load_demo_image",
    "materialize_demo",
    "mod_crop",
    "pyramid_factors",
    "read_image",
    "read_image_size",
    "sample_seed",
    "set_max_image_pixels",
    "to_tensor",
]

_LAZY = {"SRDataModule", "DemoDataModule", "ShardSampler"}


def __getattr__(name: str) -> Any:
    """Import the Lightning DataModules only when first used."""
    if name in _LAZY:
        from drn_lightning.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'drn_lightning.data' has no attribute {name!r}")
