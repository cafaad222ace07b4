"""Issue 13 (5, 7, 8): W&B follows a resumed run, remote checkpoint folders (fsspec), EMA of the weights, DIV2K hold-out."""

from __future__ import annotations

import copy
import json
import logging
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import CPU_DDP, TINY_TRAIN, compose_train, run_module
from drn_lightning.options import OptionError
from drn_lightning.train import prepare
from drn_lightning.training.config import check_output_dirs
from test_reliability import REPO, _env, _train_cmd, load
from test_training import read_wandb_records

# ---------------------------------------------------------------------------------------------- W&B


@pytest.mark.slow
def test_a_killed_and_resumed_run_continues_the_same_wandb_run(tmp_path: Path) -> None:
    """Killed at step 3 and started again with the same command (ckpt_path=auto): both starts log under one W&B id,
    the one kept in the run folder; offline, that is one `offline-run-<time>-<id>` folder per start."""
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    env = {**_env(cache), "HOME": str(tmp_path), "WANDB_API_KEY": "", "WANDB_SILENT": "true"}
    killer = ["+callbacks.killer._target_=helpers_reliability.KillAtStep", "+callbacks.killer.step=3"]
    starts = []
    for extra in (killer, []):
        command = _train_cmd(run_dir, ["logger=wandb", *extra])
        starts.append(subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300))
    assert starts[0].returncode == -signal.SIGKILL, starts[0].stderr[-3000:]
    assert starts[1].returncode == 0, starts[1].stderr[-3000:]
    assert "Restoring states from the checkpoint" in starts[1].stdout + starts[1].stderr  # it did resume
    run_id = (run_dir / "wandb_id").read_text()
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders), folders
    for folder in folders:
        (log,) = folder.glob("run-*.wandb")
        assert log.name == f"run-{run_id}.wandb"
    runs = [
        r.run for r in read_wandb_records(folders[1] / f"run-{run_id}.wandb") if r.WhichOneof("record_type") == "run"
    ]
    assert runs and {r.run_id for r in runs} == {run_id}


# ---------------------------------------------------------------------------------------------- remote storage


def _local_folders_named_like_urls(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*:") if p.is_dir()]


def test_checkpoints_go_to_an_fsspec_url_and_resume_from_there(tmp_path: Path, demo_cache: Path) -> None:
    """`callbacks.model_checkpoint.dirpath=memory://...`: last.ckpt is written there (not to a local `memory:`
    folder), and the same command resumes from it (ckpt_path=auto)."""
    import fsspec

    from drn_lightning.train import prepare, train

    fs, folder = fsspec.filesystem("memory"), f"/ckpts_{tmp_path.name}"
    url = f"memory://{folder.lstrip('/')}"
    overrides = [*TINY_TRAIN, "logger=csv", f"callbacks.model_checkpoint.dirpath={url}"]
    try:
        first = compose_train(overrides, tmp_path / "run", demo_cache)
        assert train(first, *prepare(first))["global_step"] == 2
        assert f"{folder}/last.ckpt" in fs.ls(folder, detail=False)
        assert load(f"{url}/last.ckpt")["global_step"] == 2
        assert _local_folders_named_like_urls(REPO, tmp_path) == []

        again = compose_train([*overrides, "trainer.max_steps=4", "trainer.max_epochs=2"], tmp_path / "run", demo_cache)
        datamodule, module, trainer = prepare(again)
        assert again.ckpt_path == f"{url}/last.ckpt"
        assert train(again, datamodule, module, trainer)["global_step"] == 4
        assert load(f"{url}/last.ckpt")["global_step"] == 4
        assert _local_folders_named_like_urls(REPO, tmp_path) == []
    finally:
        if fs.exists(folder):
            fs.rm(folder, recursive=True)


def test_output_folders_given_as_urls_are_checked_without_local_folders(tmp_path: Path, demo_cache: Path) -> None:
    cfg = compose_train(
        [*TINY_TRAIN, "callbacks.model_checkpoint.dirpath=nosuchfs://bucket/ckpts"], tmp_path, demo_cache
    )
    with pytest.raises(OptionError, match=r"^callbacks.model_checkpoint.dirpath='nosuchfs://bucket/ckpts': .*nosuchfs"):
        check_output_dirs(cfg)
    check_output_dirs(
        compose_train([*TINY_TRAIN, "callbacks.model_checkpoint.dirpath=memory://b/c"], tmp_path, demo_cache)
    )
    assert _local_folders_named_like_urls(REPO, tmp_path) == []


# ---------------------------------------------------------------------------------------------- EMA of the weights

EMA = [
    *TINY_TRAIN,
    "logger=csv",
    "callbacks=ema",
    "callbacks.ema.decay=0.5",  # a short memory, so 4 steps of lr 1e-2 leave raw and averaged weights far apart
    "model.optimizer.lr=0.01",
    "trainer.max_steps=4",
    "trainer.max_epochs=2",  # 2 steps per epoch: validation and a checkpoint at steps 2 and 4
    "callbacks.model_checkpoint.monitor=null",
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.model_checkpoint.filename='step{step}'",
]


class WeightRecorder(pl.Callback):
    """The raw weights after every optimiser step, and the weights validation scores with."""

    def __init__(self) -> None:
        self.raw: list[dict[str, torch.Tensor]] = []
        self.validated: dict[int, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _weights(module: pl.LightningModule) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.raw.append(self._weights(pl_module))

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not trainer.sanity_checking:
            self.validated.setdefault(trainer.global_step, self._weights(pl_module))


def _hand_ema(steps: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """W_1 = w_1, W_t = decay W_{t-1} + (1 - decay) w_t: torch's EMA as documented, computed here."""
    average = dict(steps[0])
    for weights in steps[1:]:
        average = {k: decay * average[k] + (1 - decay) * weights[k] for k in average}
    return average


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=1e-5, atol=1e-6, msg=key)


def test_ema_validates_checkpoints_and_evaluates_the_averaged_weights(tmp_path: Path, demo_cache: Path) -> None:
    """`callbacks=ema`: validation and eval.json score the EMA of the raw weights (computed here by hand), the
    checkpoint holds both (state_dict: averaged, current_model_state: raw), load_weights reads the averaged ones."""
    from drn_lightning.eval import evaluate, model_upscaler
    from drn_lightning.models import load_weights
    from drn_lightning.train import prepare, train

    cfg = compose_train([*EMA, "test_after_fit=true", "eval_extra_sets=[]"], tmp_path / "run", demo_cache)
    datamodule, module, trainer = prepare(cfg)
    recorder = WeightRecorder()
    trainer.callbacks.append(recorder)
    train(cfg, datamodule, module, trainer)
    assert len(recorder.raw) == 4
    for step in (2, 4):
        _assert_close(recorder.validated[step], _hand_ema(recorder.raw[:step], 0.5))
    saved = load(tmp_path / "run" / "checkpoints" / "step4.ckpt")
    _assert_close(saved["state_dict"], _hand_ema(recorder.raw, 0.5))
    _assert_close(saved["current_model_state"], recorder.raw[-1])
    assert int(saved["averaging_state"]["n_averaged"]) == 4
    assert any(not torch.allclose(saved["state_dict"][k], v) for k, v in recorder.raw[-1].items())

    averaged, _, _ = load_weights(tmp_path / "run" / "checkpoints" / "step4.ckpt")
    raw = copy.deepcopy(averaged)
    raw.load_state_dict({k.removeprefix("primal."): v for k, v in recorder.raw[-1].items() if k.startswith("primal.")})
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    datasets = dict(datamodule.val_datasets)
    scores = {
        w: evaluate(model_upscaler(net.eval()), datasets, 4, "cpu", True)
        for w, net in (("ema", averaged), ("raw", raw))
    }
    assert report["demo"]["model"]["psnr"] == pytest.approx(scores["ema"]["demo"]["psnr"], abs=1e-6)
    assert abs(scores["raw"]["demo"]["psnr"] - scores["ema"]["demo"]["psnr"]) > 1e-3


def test_ema_state_resumes_exactly(tmp_path: Path, demo_cache: Path) -> None:
    """Resumed from the step-2 checkpoint, the run ends with the same raw and averaged weights as the
    uninterrupted one."""
    from drn_lightning.train import prepare

    whole = compose_train(EMA, tmp_path / "whole", demo_cache)
    datamodule, module, trainer = prepare(whole)
    trainer.fit(module, datamodule=datamodule)
    first = tmp_path / "whole" / "checkpoints"
    resumed = compose_train([*EMA, f"ckpt_path={first / 'step2.ckpt'}"], tmp_path / "resumed", demo_cache)
    datamodule, module, trainer = prepare(resumed)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resumed.ckpt_path)
    a, b = load(first / "step4.ckpt"), load(tmp_path / "resumed" / "checkpoints" / "step4.ckpt")
    assert a["global_step"] == b["global_step"] == 4
    for part in ("state_dict", "current_model_state", "averaging_state"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"


@pytest.mark.slow
def test_ema_under_ddp_checkpoints_and_evaluates_the_average(tmp_path: Path, demo_cache: Path) -> None:
    """Two CPU ranks: the checkpoint's averaged weights are the hand-computed EMA of the raw ones at steps 1 and 2,
    and eval.json (rank 0) scores exactly those averaged weights."""
    from drn_lightning.data import BenchmarkDataset
    from drn_lightning.eval import evaluate, model_upscaler
    from drn_lightning.models import load_weights

    run_dir = tmp_path / "ddp"
    overrides = [o for o in EMA if o not in ("test_after_fit=false", "trainer.max_steps=4", "trainer.max_epochs=2")]
    result = run_module(
        "drn_lightning.train",
        [
            *overrides,
            "trainer.max_steps=2",
            "callbacks.model_checkpoint.every_n_train_steps=1",
            "eval_extra_sets=[]",
            *CPU_DDP,
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={demo_cache}",
        ],
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    step1, step2 = (load(run_dir / "checkpoints" / f"step{s}.ckpt") for s in (1, 2))
    _assert_close(step2["state_dict"], _hand_ema([step1["current_model_state"], step2["current_model_state"]], 0.5))
    assert int(step2["averaging_state"]["n_averaged"]) == 2
    primal, _, _ = load_weights(run_dir / "checkpoints" / "step2.ckpt")
    single = evaluate(
        model_upscaler(primal.eval()), {"demo": BenchmarkDataset(demo_cache / "demo", "val", 4)}, 4, round_y=True
    )
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["demo"]["model"]["psnr"] == pytest.approx(single["demo"]["psnr"], abs=1e-6)


# ---------------------------------------------------------------------------------------------- DIV2K hold-out

DIV2K_VAL = [f"{i:04d}" for i in range(801, 811)]


@pytest.mark.parametrize(
    ("experiment", "degradation"),
    [(None, None), ("paper_drn_l_x4", None), ("paper_drn_s_x8", None), ("semi_bd", "bd"), ("semi_nearest", "nearest")],
)
def test_paper_configs_validate_on_a_div2k_hold_out_first_and_set5(
    tmp_path: Path, demo_cache: Path, experiment: str | None, degradation: str | None
) -> None:
    """The hold-out selects checkpoints (the first set), degraded like the target in the semi-supervised recipes."""
    overrides = [f"experiment={experiment}"] if experiment else []
    cfg = compose_train([*overrides, f"paths.data_dir={tmp_path}"], tmp_path / "run", demo_cache, demo=False)
    assert next(iter(cfg.data.val_sets)) == "DIV2K_val" and "Set5" in cfg.data.val_sets
    hold_out = cfg.data.val_sets.DIV2K_val
    assert (hold_out.root, hold_out.set_name) == (f"{tmp_path}/DIV2K", "DIV2K_valid_HR")
    assert list(hold_out.images) == DIV2K_VAL and hold_out.get("degradation") == degradation


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 24, 3), value, np.uint8)).save(path)


def test_the_div2k_hold_out_is_images_0801_to_0810(tmp_path: Path, demo_cache: Path) -> None:
    """On a DIV2K layout with neighbours around 0801-0810, the composed hold-out picks exactly those ten."""
    from hydra.utils import instantiate

    valid = tmp_path / "DIV2K" / "DIV2K_valid_HR"
    for index, stem in enumerate(["0001", "0800", *DIV2K_VAL, "0811", "0900"]):
        _png(valid / f"{stem}.png", 10 * index)
    (valid / "readme.txt").write_text("not an image")
    cfg = compose_train([f"paths.data_dir={tmp_path}"], tmp_path / "run", demo_cache, demo=False)
    dataset = instantiate(cfg.data.val_sets.DIV2K_val)(scale=4)
    dataset.setup()
    assert [p.name for p in dataset.files] == [f"{stem}.png" for stem in DIV2K_VAL]
    assert len(dataset) == 10 and dataset[0]["name"] == "0801.png" and dataset[0]["set"] == "DIV2K_val"
    assert tuple(dataset[9]["hr"].shape) == (3, 16, 24) and float(dataset[9]["hr"].mean()) == 110.0  # 0810's value

    (valid / "0805.png").unlink()
    with pytest.raises(OptionError, match=r"^images=\[.*\]: \['0805'\] not in .*DIV2K_valid_HR"):
        instantiate(cfg.data.val_sets.DIV2K_val)(scale=4).setup()


def test_without_div2k_or_set5_the_paper_config_needs_only_its_training_data(
    tmp_path: Path, demo_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No DF2K: one error naming the option and how to get the data; no DIV2K/Set5: those sets are left out, warned."""
    overrides = [f"paths.data_dir={tmp_path}", f"paths.benchmarks_dir={tmp_path}/none", "data.patch_size=16"]
    cfg = compose_train(overrides, tmp_path / "run", demo_cache, demo=False)
    with pytest.raises(OptionError) as info:
        prepare(cfg)
    message = str(info.value)
    assert message.startswith(f"data.train.hr_dir='{tmp_path}/DF2K/DF2K_train_HR': does not exist")
    assert "drn-sr data fetch div2k" in message and "\n" not in message
    _png(tmp_path / "DF2K" / "DF2K_train_HR" / "0001.png", 50)
    (tmp_path / "DF2K" / "DF2K_train_LR_bicubic").mkdir(parents=True)
    datamodule, _, _ = prepare(cfg)
    assert datamodule.val_set_names == ["DIV2K_val", "Set5"]  # known from the config; folders are read in setup
    with caplog.at_level(logging.WARNING):
        datamodule.prepare_data()  # the LR levels DF2K lacks here are made from the HR
        datamodule.setup("fit")
    assert datamodule.val_set_names == []
    assert "validation set DIV2K_val left out" in caplog.text and "validation set Set5 left out" in caplog.text
