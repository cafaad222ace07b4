"""`python -m drn_lightning.eval`: the command shape outside tools use, its JSON, and its errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BENCHMARKS_DIR, CONF_DIR, REPO_ROOT, run_module
from drn_lightning.eval import bicubic_upscaler, evaluate, failure_line, model_upscaler, run
from drn_lightning.metrics import psnr_y
from drn_lightning.models import build_drn, official_to_checkpoint
from drn_lightning.ops.imresize import imresize


def _photo_set(root: Path, name: str = "Photos") -> Path:
    """A tiny benchmark folder of real photos (HR only, odd sizes so mod-cropping matters)."""
    from skimage import data

    folder = root / name
    folder.mkdir(parents=True)
    Image.fromarray(data.chelsea()[:101, :143]).save(folder / "chelsea.png")
    Image.fromarray(data.coffee()[50:163, 100:205]).save(folder / "coffee.png")
    return root


def test_bicubic_scores_equal_a_hand_made_pipeline(tmp_path: Path) -> None:
    from drn_lightning.data.datasets import BenchmarkDataset

    root = _photo_set(tmp_path)
    dataset = BenchmarkDataset(root, "Photos", 4)
    scores = evaluate(bicubic_upscaler(4), {"Photos": dataset}, 4, round_y=True)["Photos"]
    expected = []
    for path in sorted((root / "Photos").glob("*.png")):
        hr = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)[None]
        hr = hr[..., : hr.shape[-2] // 4 * 4, : hr.shape[-1] // 4 * 4]
        lr = imresize(hr, scale=0.25)  # uint8 in, uint8 out, as stored LR files are
        expected.append(psnr_y(imresize(lr.float(), scale=4), hr.float(), 4, round_y=True).item())
    assert scores["images"] == 2
    assert scores["psnr"] == pytest.approx(sum(expected) / 2, abs=1e-6)


def _compose_eval(tmp_path: Path, *overrides: str):
    """conf/eval.yaml as `python -m drn_lightning.eval` composes it, results under `tmp_path`."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("eval", overrides=[f"results_json={tmp_path / 'results.json'}", *overrides])


def _eval_in_process(tmp_path: Path, *overrides: str) -> dict:
    """The eval command's `run` in this process (the subprocess tests cover the command line itself)."""
    return run(_compose_eval(tmp_path, *overrides))


def _bicubic_eval(root: Path, set_name: str, tmp_path: Path, *extra: str) -> tuple[dict, subprocess.CompletedProcess]:
    """`python -m drn_lightning.eval model=bicubic` x4 on one set under `root`; the results JSON and the run."""
    out = tmp_path / f"{set_name}.json"
    result = run_module(
        "drn_lightning.eval",
        [
            "model=bicubic",
            "scale=4",
            "data=benchmark",
            f"data.root={root}",
            f"data.sets=[{set_name}]",
            f"results_json={out}",
            f"hydra.run.dir={tmp_path / 'run'}",
            *extra,
        ],
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), result


def test_eval_command_writes_the_json_shape(tmp_path: Path) -> None:
    root = _photo_set(tmp_path / "bench")
    payload, result = _bicubic_eval(root, "Photos", tmp_path)
    assert set(payload) == {"Photos"}
    assert set(payload["Photos"]) == {"psnr", "ssim", "images", "degradation"}
    assert payload["Photos"]["degradation"] == "bicubic"
    assert payload["Photos"]["images"] == 2 and 20 < payload["Photos"]["psnr"] < 40
    assert "Photos" in result.stdout and "PSNR" in result.stdout


def test_eval_on_nearest_lr_matches_an_independent_pipeline(tmp_path: Path) -> None:
    """`data.degradation=nearest`: the LR is MATLAB's nearest pick (0-based index floor((i + 0.5) * s) = 4 i + 2 at
    x4, made here with NumPy), upscaled by bicubic; the JSON entry says which degradation it scored."""
    root = _photo_set(tmp_path / "bench")
    common = ["model=bicubic", "scale=4", f"data.root={root}", "data.sets=[Photos]"]
    payload = _eval_in_process(tmp_path, *common, "data.degradation=nearest")
    expected = []
    for path in sorted((root / "Photos").glob("*.png")):
        hr = np.array(Image.open(path))
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        lr = torch.from_numpy(np.ascontiguousarray(hr[2::4, 2::4])).permute(2, 0, 1)[None].float()
        hr_t = torch.from_numpy(hr).permute(2, 0, 1)[None].float()
        expected.append(psnr_y(imresize(lr, scale=4), hr_t, 4, round_y=True).item())
    assert payload["Photos"]["degradation"] == "nearest" and payload["Photos"]["images"] == 2
    assert payload["Photos"]["psnr"] == pytest.approx(sum(expected) / 2, abs=1e-6)
    bicubic = _eval_in_process(tmp_path / "b", *common)
    assert payload["Photos"]["psnr"] < bicubic["Photos"]["psnr"] - 1.0  # a real gap, as measured on Set5


def test_eval_with_our_checkpoint_matches_in_process_scores(tmp_path: Path) -> None:
    root = _photo_set(tmp_path / "bench")
    torch.manual_seed(0)
    primal, duals = build_drn("drn_tiny", 4, init="identity")
    ckpt = tmp_path / "tiny.ckpt"
    official_to_checkpoint(primal, duals, {"variant": "drn_tiny", "scale": 4, "n_feats": 8, "n_blocks": 4}, ckpt)
    scores = _eval_in_process(
        tmp_path, "model=drn_tiny", "scale=4", f"weights={ckpt}", f"data.root={root}", "data.sets=[Photos]"
    )
    from drn_lightning.data.datasets import BenchmarkDataset

    expected = evaluate(model_upscaler(primal.eval()), {"Photos": BenchmarkDataset(root, "Photos", 4)}, 4, round_y=True)
    assert scores["Photos"]["psnr"] == pytest.approx(expected["Photos"]["psnr"], abs=1e-4)
    assert json.loads((tmp_path / "results.json").read_text()) == scores


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data.root=/nonexistent/benchmarks"], "data.root='/nonexistent/benchmarks'"),
        (["model=drn_tiny"], "needs weights=FILE"),
        (["weights=/x.pt"], "model=bicubic"),
        (["scale=3"], "scale=3"),
    ],
)
def test_eval_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    root = _photo_set(tmp_path / "bench")
    cfg = _compose_eval(tmp_path, f"data.root={root}", "data.sets=[Photos]", *args)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        run(cfg)
    line = failure_line(cfg, info.value)
    assert message in line and "\n" not in line and not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_eval_command_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The command line itself: one `error:` line on stderr, exit 2, no traceback."""
    result = run_module("drn_lightning.eval", ["scale=3", f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO_ROOT)
    assert result.returncode == 2 and result.stderr.startswith("error: scale=3") and "Traceback" not in result.stderr


def test_eval_refuses_weights_of_another_scale(tmp_path: Path) -> None:
    root = _photo_set(tmp_path / "bench")
    primal, duals = build_drn("drn_tiny", 8)
    ckpt = tmp_path / "x8.ckpt"
    official_to_checkpoint(primal, duals, {"variant": "drn_tiny", "scale": 8, "n_feats": 4, "n_blocks": 4}, ckpt)
    with pytest.raises(ValueError, match="expected scale x4.*x8"):
        _eval_in_process(
            tmp_path, "model=drn_tiny", "scale=4", f"weights={ckpt}", f"data.root={root}", "data.sets=[Photos]"
        )


@pytest.mark.skipif(not (BENCHMARKS_DIR / "Set5").is_dir(), reason="../shared/data/benchmarks not present")
def test_eval_command_reproduces_published_set5_bicubic(tmp_path: Path) -> None:
    scores = _eval_in_process(tmp_path, "model=bicubic", "scale=4", f"data.root={BENCHMARKS_DIR}", "data.sets=[Set5]")
    scores = scores["Set5"]
    assert scores["psnr"] == pytest.approx(28.42, abs=0.03)
    assert scores["ssim"] == pytest.approx(0.8104, abs=0.005)
    assert scores["images"] == 5


def test_tiled_and_self_ensemble_evaluation_agree_with_whole_image(tmp_path: Path) -> None:
    from drn_lightning.data.datasets import BenchmarkDataset

    root = _photo_set(tmp_path)
    sets = {"Photos": BenchmarkDataset(root, "Photos", 4)}
    torch.manual_seed(0)
    primal, _ = build_drn("drn_tiny", 4)  # random weights: not flip-equivariant, so the ensemble must differ
    primal.eval()
    whole = evaluate(model_upscaler(primal), sets, 4)["Photos"]
    tiled = evaluate(model_upscaler(primal, tile=12), sets, 4)["Photos"]
    ensemble = evaluate(model_upscaler(primal, self_ensemble=True), sets, 4)["Photos"]
    assert tiled["psnr"] == pytest.approx(whole["psnr"], abs=0.01)
    assert ensemble["psnr"] != pytest.approx(whole["psnr"], abs=1e-6)
