"""DRN (Dual Regression Networks, CVPR 2020) super-resolution on PyTorch Lightning + Hydra."""

from typing import Any

__version__ = "0.1.0"


def upscale(*args: Any, **kwargs: Any) -> Any:
    """Upscale an image with a DRN; imported lazily so `import drn_lightning` stays light."""
    from drn_lightning.inference import upscale as _upscale

    return _upscale(*args, **kwargs)
