"""Exported models (ONNX via onnxruntime, TorchScript) match eager PyTorch at two input sizes.

Tolerance: max |exported - eager| <= 1e-4 on a 0-1 intensity scale, i.e. 0.0255 on the model's 0-255 scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drn_lightning.cli import main
from drn_lightning.export import ExportError, export_model
from drn_lightning.models import build_drn, save_official

TOLERANCE_0_1 = 1e-4
SIZES = [(1, 21, 16), (2, 13, 30)]  # (N, H, W): odd, non-square, neither equal to the exporter's example


@pytest.fixture(scope="module")
def tiny4() -> torch.nn.Module:
    torch.manual_seed(0)
    primal, _ = build_drn("drn_tiny", 4, dual=False)
    return primal.eval()


def eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)[-1]


def inputs(n: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(h * w)) * 255


def check_onnx(path: Path, model: torch.nn.Module) -> None:
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path)).graph
    assert len(graph.output) == 1  # only the final x4 image, not the coarse levels
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # N, H, W symbolic; C fixed
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for n, h, w in SIZES:
        x = inputs(n, h, w)
        got = session.run(None, {name: x.numpy()})[0]
        ref = eager(model, x).numpy()
        assert got.shape == ref.shape == (n, 3, 4 * h, 4 * w)
        assert np.abs(got - ref).max() / 255.0 <= TOLERANCE_0_1


def test_onnx_opset17_matches_eager_at_two_sizes(tmp_path: Path, tiny4: torch.nn.Module) -> None:
    report = export_model(tiny4, tmp_path / "m.onnx", "onnx", opset=17)
    assert report.verified and report.worst <= TOLERANCE_0_1
    check_onnx(tmp_path / "m.onnx", tiny4)


@pytest.mark.slow
def test_onnx_opset18_dynamo_exporter_matches_eager(tmp_path: Path, tiny4: torch.nn.Module) -> None:
    export_model(tiny4, tmp_path / "m18.onnx", "onnx", opset=18)
    import onnx

    assert {o.domain: o.version for o in onnx.load(str(tmp_path / "m18.onnx")).opset_import}[""] == 18
    check_onnx(tmp_path / "m18.onnx", tiny4)


def test_torchscript_matches_eager_at_two_sizes(tmp_path: Path, tiny4: torch.nn.Module) -> None:
    report = export_model(tiny4, tmp_path / "m.ts", "torchscript")
    assert report.verified and report.worst <= TOLERANCE_0_1
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    for n, h, w in SIZES:
        x = inputs(n, h, w)
        with torch.inference_mode():
            got = loaded(x)
        ref = eager(tiny4, x)
        assert got.shape == ref.shape == (n, 3, 4 * h, 4 * w)
        assert (got - ref).abs().max() / 255.0 <= TOLERANCE_0_1


def test_export_errors_name_the_file(tmp_path: Path, tiny4: torch.nn.Module) -> None:
    with pytest.raises(ExportError, match="no_such_dir"):
        export_model(tiny4, tmp_path / "no_such_dir" / "m.onnx")
    with pytest.raises(ValueError, match="--format"):
        export_model(tiny4, tmp_path / "m.xyz", "tflite")


def test_cli_export(tmp_path: Path, tiny4: torch.nn.Module, capsys) -> None:
    save_official(tiny4, None, tmp_path / "w.pt")
    assert (
        main(["export", "--weights", str(tmp_path / "w.pt"), "--format", "onnx", "-o", str(tmp_path / "w.onnx")]) == 0
    )
    out = capsys.readouterr().out
    assert "drn_tiny x4" in out and "verified against eager PyTorch" in out
    check_onnx(tmp_path / "w.onnx", tiny4)
    assert (
        main(
            [
                "export",
                "--weights",
                str(tmp_path / "w.pt"),
                "--format",
                "onnx",
                "-o",
                str(tmp_path / "w2.onnx"),
                "--scale",
                "2",
            ]
        )
        == 1
    )
    assert "expected scale x2" in capsys.readouterr().err and not (tmp_path / "w2.onnx").exists()
