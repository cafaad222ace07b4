"""SR data; the Lightning DataModule loads on first access, so `read_image` stays light and Hydra's target resolves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drn_lightning.data.datasets import BenchmarkDataset, PairedDataset, UnpairedDataset
from drn_lightning.data.demo import DEMO_GREYSCALE, DEMO_TRAIN, DEMO_VAL, demo_photos, load_demo_image, materialize_demo
from drn_lightning.data.io import ImageReadError, list_images, read_image
from drn_lightning.data.samplers import KeyedConcatDataset, MixedBatchSampler

if TYPE_CHECKING:
    from drn_lightning.data.datamodule import ResumableLoader, ShardSampler, SRDataModule

__all__ = [
    "DEMO_GREYSCALE", "DEMO_TRAIN", "DEMO_VAL", "BenchmarkDataset", "ImageReadError", "KeyedConcatDataset",
    "MixedBatchSampler", "PairedDataset", "ResumableLoader", "SRDataModule", "ShardSampler", "UnpairedDataset",
    "demo_photos", "list_images", "load_demo_image", "materialize_demo", "read_image",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """Import the Lightning DataModule only when first used."""
    if name in ("SRDataModule", "ResumableLoader", "ShardSampler"):
        from drn_lightning.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'drn_lightning.data' has no attribute {name!r}")
