"""Offline demo data: public-domain / CC0 photos from the installed scikit-image wheel, as PNG folders per split."""

from __future__ import annotations

import importlib.util
import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from drn_lightning.data.io import read_image
from drn_lightning.files import atomic_write, default_cache_dir

# Licences (skimage.data): astronaut, hubble_deep_field (NASA), rocket (SpaceX) public domain; chelsea, coffee, retina,
# camera, brick, grass, gravel CC0; immunohistochemistry, coins no known copyright restrictions. Greyscale ones go RGB.
DEMO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png", "rocket": "rocket.jpg", "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png", "retina": "retina.jpg", "chelsea": "chelsea.png", "coffee": "coffee.png",
    "camera": "camera.png", "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "coins": "coins.png",
}  # fmt: skip
# Disjoint halves of the training photos, so semi-supervised runs never see their unpaired images' HR as paired data.
DEMO_PAIRED: tuple[str, ...] = ("astronaut", "hubble_deep_field", "immunohistochemistry", "camera", "brick")
DEMO_UNPAIRED: tuple[str, ...] = ("rocket", "retina", "grass", "gravel", "coins")
DEMO_TRAIN: tuple[str, ...] = DEMO_PAIRED + DEMO_UNPAIRED
DEMO_VAL: tuple[str, ...] = ("chelsea", "coffee")  # held out, disjoint from DEMO_TRAIN
DEMO_SPLITS = {"train": DEMO_TRAIN, "val": DEMO_VAL, "paired": DEMO_PAIRED, "unpaired": DEMO_UNPAIRED}  # folder: photos
DEMO_GREYSCALE: tuple[str, ...] = ("camera", "brick", "grass", "gravel", "coins")  # texture; Y is what is scored


def demo_image_path(name: str) -> Path:
    """Path of a photo bundled with the installed scikit-image (found without importing it); errors say what to do."""
    if name not in DEMO_FILES:
        raise ValueError(f"unknown demo image {name!r}; allowed: {sorted(DEMO_FILES)}")
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-image is required for the demo data: pip install scikit-image")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / DEMO_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: demo photo {name!r} is missing from the installed scikit-image wheel (reinstall scikit-image)"
        )
    return path


def load_demo_image(name: str) -> np.ndarray:
    """A demo photo as (H, W, 3) uint8 RGB, read from the local wheel only."""
    return read_image(demo_image_path(name))


def materialize_demo(folder: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """PNGs of the photos, a folder per split, complete ones kept (default root: $XDG_CACHE_HOME/drn_lightning/demo)."""
    root = default_cache_dir() / "demo" if folder is None else Path(folder).expanduser()
    for split, names in DEMO_SPLITS.items():
        for name in names:
            target, source = root / split / f"{name}.png", demo_image_path(name)
            if not (target.is_file() and _same_size(source, target)):
                atomic_write(target, partial(Image.Image.save, Image.fromarray(read_image(source)), format="PNG"))
    return {split: root / split for split in DEMO_SPLITS}


def demo_photos(split: str | None = None, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of one split (None: the folder holding them), written on first use; configs pass it as a callable."""
    if split is not None and split not in DEMO_SPLITS:
        raise ValueError(f"split={split!r}; allowed: {', '.join(DEMO_SPLITS)}, null")
    folders = materialize_demo(root)
    return folders[split] if split else folders["train"].parent


def _same_size(source: Path, target: Path) -> bool:
    """Cheap header-only check that an existing PNG is a complete copy of the source photo."""
    try:
        with Image.open(source) as a, Image.open(target) as b:
            return a.size == b.size and b.mode == "RGB"
    except OSError:
        return False
