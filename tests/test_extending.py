"""README "Extending": a network, a dataset and a degradation of one's own, each one class (or function) plus one
YAML file in a config folder of one's own, run as the README shows. Nothing in the package is edited."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, TINY_TRAIN, compose_train, run_module
from drn_lightning.training.checkpoint_io import AtomicCheckpointIO

NETS = '''
import torch
import torch.nn.functional as F
from torch import nn


class BicubicResidual(nn.Module):
    """Bicubic upsampling plus a learned residual: not a DRN, one image out."""

    def __init__(self, scale: int, channels: int = 8) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(lr, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return up + self.body(up)


def box_downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """A degradation of one's own: average-pool by the scale (uint8 in, uint8 out)."""
    out = F.avg_pool2d(hr.float()[None], scale)[0]
    return out.round().to(hr.dtype)
'''

MODEL_YAML = """
_target_: drn_lightning.training.module.DRNLitModule
_recursive_: false   # the module builds its parts and saves their configs (load_from_checkpoint rebuilds it)
name: residual
scale: ${scale}
dual: false                 # no dual regressors: primal L1 only
net: {_target_: my_nets.BicubicResidual, scale: "${scale}", channels: 8}
loss: {_target_: drn_lightning.training.losses.DRNLoss}
optimizer: {_target_: torch.optim.Adam, _partial_: true, lr: 1.0e-3}
scheduler: null
"""

DATA_YAML = """
defaults:
  - demo                    # the demo photos as paired data...
  - _self_
unpaired:                   # ...and the same photos degraded by my_nets.box_downsample as unpaired data
  _target_: drn_lightning.data.UnpairedDataset
  _partial_: true
  hr_dir: {_target_: drn_lightning.data.demo_photos, _partial_: true, split: train, root: "${paths.cache_dir}/demo"}
  degradation: {_target_: my_nets.box_downsample, _partial_: true}
unpaired_ratio: 0.5
"""


def _write_own_code(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "my_nets.py").write_text(textwrap.dedent(NETS))
    for group, text in (("model", MODEL_YAML), ("data", DATA_YAML)):
        (tmp_path / "my_conf" / group).mkdir(parents=True)
        (tmp_path / "my_conf" / group / "mine.yaml").write_text(textwrap.dedent(text))


def _check_checkpoint(last: Path) -> None:
    checkpoint = AtomicCheckpointIO().load_checkpoint(last)
    assert checkpoint["global_step"] == 2
    assert sorted(checkpoint["state_dict"]) == [
        "primal.body.0.bias",
        "primal.body.0.weight",
        "primal.body.2.bias",
        "primal.body.2.weight",
    ]
    assert checkpoint["hyper_parameters"]["net"]["_target_"] == "my_nets.BicubicResidual"
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_a_network_and_a_degradation_of_ones_own_train_in_process(
    tmp_path: Path, demo_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's YAML files composed and trained in this process (the command itself: the slow test below)."""
    from drn_lightning.train import prepare, train

    _write_own_code(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    overrides = [o for o in TINY_TRAIN if not o.startswith("model=")]
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    cfg = compose_train([searchpath, "model=mine", "data=mine", *overrides], tmp_path / "run", demo_cache)
    assert train(cfg, *prepare(cfg))["global_step"] == 2
    _check_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_a_network_and_a_degradation_of_ones_own_train_from_yaml_files(tmp_path: Path, demo_cache: Path) -> None:
    _write_own_code(tmp_path)
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY_TRAIN if not o.startswith("model=")]
    result = run_module(
        "drn_lightning.train",
        [
            f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
            "model=mine",
            "data=mine",
            *overrides,
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={demo_cache}",
        ],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(tmp_path / "code")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _check_checkpoint(run_dir / "checkpoints" / "last.ckpt")
