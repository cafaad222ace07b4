"""Shared pytest fixtures."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def skimage_photos() -> dict[str, np.ndarray]:
    """Real RGB photos (uint8, H x W x 3) bundled with scikit-image: independent test content."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee")}
