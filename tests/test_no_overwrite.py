"""Issue 21, nothing overwritten: every writer (`drn-sr export/convert/upscale`, eval's results_json, the report)
refuses an input of the same command, and an existing file unless told, with one `error:` line before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CONF_DIR
from drn_lightning.cli import main
from drn_lightning.files import OutputExistsError, claim_output
from drn_lightning.models import DRN, save_official


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DRN x2 primal in the authors' format (with its duals in `<stem>_dual.pt`)."""
    folder = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    model = DRN(scale=2, n_feats=4, n_blocks=1)
    save_official(model, model.build_duals(), folder / "w.pt", folder / "w_dual.pt")
    return folder / "w.pt"


def copy_of(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return line


def test_claim_output_sees_through_links_and_dotdot(tmp_path: Path) -> None:
    source = tmp_path / "w.ckpt"
    source.write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.ckpt").symlink_to(source)
    os.link(source, tmp_path / "hard.ckpt")
    for spelling in (source, tmp_path / "sub" / ".." / "w.ckpt", tmp_path / "link.ckpt", tmp_path / "hard.ckpt"):
        with pytest.raises(OutputExistsError) as info:
            claim_output(spelling, inputs=[("--weights", source)], overwrite=True)
        assert str(info.value) == f"-o {spelling}: is an input of this command (--weights); choose another file"
    with pytest.raises(OutputExistsError, match=r"^results_json=.*w.ckpt: exists; pass overwrite=true to replace it$"):
        claim_output(source, option="results_json=")
    new = tmp_path / "new" / "a.json"
    assert claim_output(new, inputs=[("IN", source)]) == new and not new.parent.exists()  # checks, creates nothing
    with pytest.raises(OutputExistsError, match=r"\(-o\)"):  # two outputs of one command, neither written yet
        claim_output(tmp_path / "x.pt", inputs=[("-o", tmp_path / "sub" / ".." / "x.pt")], option="--dual-out")


@pytest.mark.parametrize("spelling", ["same", "symlink"])
def test_export_refuses_to_write_over_its_weights(tmp_path: Path, weights: Path, capsys, spelling: str) -> None:
    """Before: `drn-sr export --weights w.pt --format torchscript -o w.pt` replaced the weights with the export."""
    w = copy_of(weights, tmp_path / "w.pt")
    out = w
    if spelling == "symlink":
        out = tmp_path / "link.pt"
        out.symlink_to(w)
    before = w.read_bytes()
    assert main(["export", "--weights", str(w), "--format", "torchscript", "-o", str(out)]) == 2
    assert one_error(capsys) == f"error: -o {out}: is an input of this command (--weights); choose another file"
    assert w.read_bytes() == before
    assert main(["export", "--weights", str(w), "--format", "torchscript", "-o", str(out), "--overwrite"]) == 2
    assert w.read_bytes() == before  # --overwrite never reaches an input


def test_export_keeps_an_existing_output_unless_overwrite(tmp_path: Path, weights: Path, capsys) -> None:
    out = tmp_path / "m.ts"
    out.write_bytes(b"keep me")
    args = ["export", "--weights", str(weights), "--format", "torchscript", "-o", str(out)]
    assert main(args) == 2
    assert one_error(capsys) == f"error: -o {out}: exists; pass --overwrite to replace it"
    assert out.read_bytes() == b"keep me"
    assert main([*args, "--overwrite"]) == 0
    assert torch.jit.load(str(out))(torch.rand(1, 3, 6, 5) * 255).shape == (1, 3, 12, 10)


def test_convert_refuses_its_inputs_each_other_and_existing_files(tmp_path: Path, weights: Path, capsys) -> None:
    primal, dual = copy_of(weights, tmp_path / "p.pt"), copy_of(weights.with_name("w_dual.pt"), tmp_path / "d.pt")
    before = {p: p.read_bytes() for p in (primal, dual)}
    ckpt = tmp_path / "m.ckpt"
    cases = [
        (
            ["convert", str(primal), "--dual", str(dual), "-o", str(dual)],
            f"-o {dual}: is an input of this command (--dual)",
        ),
        (["convert", str(primal), "-o", str(tmp_path / "." / "p.pt")], "is an input of this command (IN)"),
    ]
    for args, message in cases:
        assert main(args) == 2
        assert message in one_error(capsys)
    assert {p: p.read_bytes() for p in before} == before
    assert main(["convert", str(primal), "--dual", str(dual), "-o", str(ckpt)]) == 0
    capsys.readouterr()
    both = ["convert", str(ckpt), "-o", str(tmp_path / "x.pt"), "--dual-out", str(tmp_path / "x.pt")]
    assert main(both) == 2
    assert one_error(capsys).startswith(f"error: --dual-out {tmp_path / 'x.pt'}: is an input of this command (-o)")
    assert not (tmp_path / "x.pt").exists()  # the primal was not written either
    ckpt_bytes = ckpt.read_bytes()
    assert main(["convert", str(primal), "--dual", str(dual), "-o", str(ckpt)]) == 2
    assert one_error(capsys) == f"error: -o {ckpt}: exists; pass --overwrite to replace it"
    assert ckpt.read_bytes() == ckpt_bytes
    (tmp_path / "back_dual_model.pt").write_bytes(b"keep me")  # the default --dual-out exists: refused, -o not written
    assert main(["convert", str(ckpt), "-o", str(tmp_path / "back.pt")]) == 2
    assert "--dual-out" in one_error(capsys) and not (tmp_path / "back.pt").exists()
    assert main(["convert", str(ckpt), "-o", str(tmp_path / "back.pt"), "--overwrite"]) == 0
    assert (tmp_path / "back_dual_model.pt").read_bytes() != b"keep me"


def _eval_cfg(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    folder = tmp_path / "bench" / "Photos"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        from skimage import data

        Image.fromarray(data.chelsea()[:40, :48]).save(folder / "chelsea.png")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = ["scale=2", "device=cpu", f"data.root={tmp_path / 'bench'}", "data.sets=[Photos]"]
        return compose("eval", overrides=[*base, *overrides])


def test_eval_results_json_never_replaces_its_weights_or_images(tmp_path: Path, weights: Path) -> None:
    """Before: `results_json=<its own weights file>` evaluated, then wrote the JSON over the weights."""
    from drn_lightning.eval import run

    w = copy_of(weights, tmp_path / "w.pt")
    cfg = _eval_cfg(tmp_path, "model=drn_tiny", "model.net.n_feats=4", "model.net.n_blocks=1", f"weights={w}")
    image = tmp_path / "bench" / "Photos" / "chelsea.png"
    before = {p: p.read_bytes() for p in (w, image)}
    for out, which in (
        (w, "weights"),
        (image, "data.sets"),
        (tmp_path / "bench" / "x" / ".." / "Photos/chelsea.png", "data.sets"),
    ):
        cfg.results_json, cfg.overwrite = str(out), True
        with pytest.raises(OutputExistsError) as info:
            run(cfg)
        assert str(info.value) == f"results_json={out}: is an input of this command ({which}); choose another file"
    assert {p: p.read_bytes() for p in before} == before


def test_eval_keeps_an_existing_results_json_unless_overwrite(tmp_path: Path) -> None:
    from drn_lightning.eval import run

    out = tmp_path / "r.json"
    out.write_text("{}")
    cfg = _eval_cfg(tmp_path, "model=bicubic", f"results_json={out}")
    assert cfg.overwrite is False
    with pytest.raises(OutputExistsError, match=rf"^results_json={out}: exists; pass overwrite=true to replace it$"):
        run(cfg)
    assert out.read_text() == "{}"
    cfg.overwrite = True
    assert run(cfg)["Photos"]["images"] == 1 and json.loads(out.read_text())["Photos"]["images"] == 1


def test_report_keeps_an_earlier_report_unless_overwrite(tmp_path: Path, capsys) -> None:
    from omegaconf import OmegaConf

    from drn_lightning.report import main as report

    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 0, "data": {"unpaired_ratio": 0.3}}), tmp_path / "0/.hydra/config.yaml")
    (tmp_path / "0" / "metrics.json").write_text(json.dumps({"val/psnr": 30.0}))
    (tmp_path / "summary.csv").write_text("an earlier summary")
    assert report([str(tmp_path)]) == 2
    assert one_error(capsys) == f"error: {tmp_path / 'summary.csv'}: exists; pass --overwrite to replace it"
    assert not (tmp_path / "report.json").exists()  # all outputs are checked before the first is written
    assert report([str(tmp_path), "--overwrite"]) == 0
    assert (tmp_path / "summary.csv").read_text().startswith("data.unpaired_ratio")


def test_upscale_input_check_goes_through_the_same_helper(tmp_path: Path, weights: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("cat.png", "cat_x2.png"):
        Image.fromarray(np.full((6, 7, 3), 90, np.uint8)).save(folder / name)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["upscale", str(folder), "-o", str(folder), "--weights", str(weights), "--overwrite"]) == 2
    assert "is an input of this command (INPUT)" in one_error(capsys)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
