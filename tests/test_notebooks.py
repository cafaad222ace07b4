"""The quickstart notebook is stored without outputs and runs top to bottom in this environment's Python."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_is_stored_without_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.slow
def test_quickstart_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # A private kernelspec pinned to this interpreter, found first through JUPYTER_PATH, so the
    # notebook never runs in whatever `python` a global kernelspec would pick.
    spec_dir = tmp_path / "jupyter" / "kernels" / "drn-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "drn-lightning test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # let ipykernel use its inline backend
    monkeypatch.delenv("DRN_WEIGHTS", raising=False)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="drn-test", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "training drn_tiny for about a minute" in text and "PSNR-Y bicubic" in text
    psnr = {k: float(v) for k, v in re.findall(r"(bicubic|DRN[^\n]*\)) (\d+\.\d+) dB", text)}
    drn = next(v for k, v in psnr.items() if k.startswith("DRN"))
    assert drn > psnr["bicubic"], psnr  # a trained model, never a random one
    assert "max |tiled - whole| in gray levels:" in text
    figures = [out for cell in nb.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert figures, "the comparison figure was not produced"
