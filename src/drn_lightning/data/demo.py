"""Offline demo data: the public-domain / CC0 colour photos shipped inside scikit-image's wheel.

They are read straight from the installed ``skimage/data`` folder (no ``pooch`` download, no
network) and written once as PNGs into ``<root>/train`` and ``<root>/val``, so the ordinary
folder datasets serve them. Licences, per scikit-image's ``skimage.data`` docstrings:
astronaut (NASA, public domain), rocket (SpaceX, public domain), hubble_deep_field (NASA, public
domain), immunohistochemistry (no known copyright restrictions), retina (CC0), chelsea (CC0,
Stefan van der Walt), coffee (CC0, Rachel Michetti); greyscale, repeated to RGB: camera (CC0, Lav Varshney),
brick, grass, gravel (CC0 textures), coins (no known copyright restrictions).
"""

from __future__ import annotations

import importlib.util
import os
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from drn_lightning.data.io import read_image
from drn_lightning.files import atomic_write

__all__ = [
    "DEMO_FILES",
    "DEMO_GREYSCALE",
    "DEMO_PAIRED",
    "DEMO_SPLITS",
    "DEMO_TRAIN",
    "DEMO_UNPAIRED",
    "DEMO_VAL",
    "default_demo_root",
    "demo_image_path",
    "demo_photos",
    "load_demo_image",
    "materialize_demo",
]

DEMO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "retina": "retina.jpg",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "camera": "camera.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "coins": "coins.png",
}
"""Demo name -> file inside ``skimage/data``: the RGB photos plus CC0 greyscale photos/textures (made RGB)."""

DEMO_TRAIN: tuple[str, ...] = (
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "brick",
    "grass",
    "gravel",
    "coins",
)
"""Training photos (never used for validation)."""

DEMO_VAL: tuple[str, ...] = ("chelsea", "coffee")
"""Held-out validation photos, disjoint from :data:`DEMO_TRAIN`."""

DEMO_PAIRED: tuple[str, ...] = ("astronaut", "hubble_deep_field", "immunohistochemistry", "camera", "brick")
DEMO_UNPAIRED: tuple[str, ...] = ("rocket", "retina", "grass", "gravel", "coins")
"""Two disjoint halves of :data:`DEMO_TRAIN` (split ``paired`` / ``unpaired``): the semi-supervised experiments
never see the HR of their unpaired images as paired data."""

DEMO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": DEMO_TRAIN,
    "val": DEMO_VAL,
    "paired": DEMO_PAIRED,
    "unpaired": DEMO_UNPAIRED,
}
"""Folder name under the demo root -> the photos written into it."""

DEMO_GREYSCALE: tuple[str, ...] = ("camera", "brick", "grass", "gravel", "coins")
"""Greyscale photos among the training set (repeated to RGB): texture for the network, Y is what is scored."""


def _skimage_data_dir() -> Path:
    """Folder of the data files bundled with the installed scikit-image (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-image is required for the demo data: pip install scikit-image")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def demo_image_path(name: str) -> Path:
    """Path of a bundled demo photo; errors name the photo and the allowed names."""
    if name not in DEMO_FILES:
        raise ValueError(f"unknown demo image {name!r}; allowed: {sorted(DEMO_FILES)}")
    path = _skimage_data_dir() / DEMO_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: demo photo {name!r} is missing from the installed scikit-image wheel (reinstall scikit-image)"
        )
    return path


def load_demo_image(name: str) -> np.ndarray:
    """A demo photo as (H, W, 3) uint8 RGB, read from the local wheel only."""
    return read_image(demo_image_path(name))


def default_demo_root() -> Path:
    """``$DRN_DEMO_ROOT``, else ``$XDG_CACHE_HOME/drn_lightning/demo`` (``~/.cache`` by default)."""
    env = os.environ.get("DRN_DEMO_ROOT")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "drn_lightning" / "demo"


def materialize_demo(folder: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Write the demo photos as PNGs into one folder per split (:data:`DEMO_SPLITS`) once; returns their paths.

    Idempotent: photos already present (same pixel size as the source) are left alone.
    """
    root = Path(folder).expanduser() if folder is not None else default_demo_root()
    out: dict[str, Path] = {}
    for split, names in DEMO_SPLITS.items():
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = split_dir / f"{name}.png"
            source = demo_image_path(name)
            if target.is_file() and _same_size(source, target):
                continue
            atomic_write(target, partial(Image.Image.save, Image.fromarray(read_image(source)), format="PNG"))
        out[split] = split_dir
    return out


def demo_photos(split: str | None = None, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder of one split (`train`: 10 photos, `val`: chelsea and coffee, `paired`/`unpaired`: disjoint halves
    of `train`; None: the folder holding them), written on first use. Data configs pass it as a folder made when
    the dataset is built (`_partial_: true`)."""
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
