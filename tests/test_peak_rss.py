"""benchmarks/peak_rss.py: the peak-memory helper `make bench` relies on, and what it shows about tiling."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from peak_rss import upscale_peak_rss


def test_peak_rss_helper_reports_a_child_process_peak() -> None:
    report = upscale_peak_rss("drn_tiny", 2, size=(64, 64), tile=None)
    assert report.baseline_bytes > 50 * 2**20  # interpreter + torch are resident before the call
    assert report.peak_bytes >= report.baseline_bytes


@pytest.mark.slow
def test_tiled_drn_s_x4_uses_less_memory_than_whole_image() -> None:
    # Measured on a 2-core CPU: tiled ~413 MiB, whole ~573 MiB peak (interpreter + torch ~273 MiB).
    tiled = upscale_peak_rss("drn_s", 4, size=(128, 128), tile=64, tile_passes=1)
    whole = upscale_peak_rss("drn_s", 4, size=(128, 128), tile=None)
    assert tiled.peak_bytes < 2 * 2**30
    assert tiled.peak_bytes < whole.peak_bytes
