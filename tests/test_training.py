"""Training: Hydra composition, config validation, one step, resume, DDP, multirun + report, W&B offline."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from conftest import BENCHMARKS_DIR, CPU_DDP, REPO_ROOT, TINY_TRAIN, compose_train, execute_notebook, run_module
from drn_lightning.ops.imresize import imresize
from drn_lightning.options import OptionError
from drn_lightning.train import prepare, train


def test_the_default_is_the_paper_recipe_and_the_demo_is_one_word_away(tmp_path: Path, demo_cache: Path) -> None:
    cfg = compose_train([], tmp_path, demo_cache, demo=False)
    assert cfg.model.name == "drn_s" and cfg.data.train.hr_dir.endswith("DF2K/DF2K_train_HR")
    assert (cfg.data.patch_size, cfg.data.batch_size, cfg.data.global_batch) == (384, 32, True)
    assert cfg.model.optimizer.lr == 1e-4 and cfg.model.scheduler.eta_min == 1e-7
    assert cfg.trainer.max_epochs * cfg.data.steps_per_epoch == 1_000_000 and cfg.trainer.max_time is None
    assert cfg.model.loss.dual_weight == 0.1 and cfg.model.optimizer.betas == [0.9, 0.999]
    assert cfg.trainer.precision == "32-true" and cfg.torch_threads is None and cfg.ckpt_path == "auto"
    demo = compose_train(["experiment=demo"], tmp_path, demo_cache)
    prepare(demo)
    assert demo.model.name == "drn_tiny" and demo.scale == 4
    assert demo.data.train.hr_dir._target_ == "drn_lightning.data.demo_photos"


def test_headline_command_builds_drn_l_x8_with_4_device_ddp_and_names_the_missing_data(
    tmp_path: Path, demo_cache: Path
) -> None:
    """`python -m drn_lightning.train model=drn_l scale=8 trainer.devices=4`: the paper's DRN-L x8 on DF2K; without
    the data, one error naming the folder and the layout, before anything is built."""
    cfg = compose_train(["model=drn_l", "scale=8", "trainer.devices=4", "trainer.accelerator=cpu",
                         f"paths.data_dir={tmp_path / 'data'}"], tmp_path, demo_cache, demo=False)  # fmt: skip
    with pytest.raises(OptionError) as info:
        prepare(cfg)
    message = str(info.value)
    assert (
        message.startswith(f"data.train.hr_dir='{tmp_path / 'data'}/DF2K/DF2K_train_HR': ") and "drn-sr data" in message
    )
    module = instantiate(cfg.model)
    primal, duals = module.primal, module.duals
    assert (primal.scale, primal.n_feats, primal.n_blocks) == (8, 10, 36)
    assert sum(p.numel() for p in primal.parameters()) == 10_004_018
    assert len(duals) == 3
    assert cfg.data.scale == 8  # the data module follows the top-level scale
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.num_devices == 4
    assert type(trainer.strategy).__name__ == "DDPStrategy"


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        (["scale=3"], "scale=3"),
        (["data=semi", "data.unpaired_ratio=1.0"], "data.unpaired_ratio=1.0"),
        (["data.patch_size=30"], "data.patch_size=30"),
        (["data=df2k", "paths.data_dir=/nonexistent"], "data.train.hr_dir"),
        (["model.optimizer.lr=-1"], "model.optimizer.lr=-1"),
        (["nonfinite_loss=ignore"], "nonfinite_loss='ignore'"),
        (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path='/nonexistent/last.ckpt': file not found"),
        (["model=bicubic"], "model='bicubic'"),
        (["model=drn_s", "scale=2"], "model.net.variant='drn_s'"),
        (["model.net.n_feats=2"], "model.net.n_feats=2"),
        pytest.param(["trainer.max_steps=-1", "trainer.max_epochs=-1"], "trainer.max_steps", marks=pytest.mark.slow),
    ],
)
def test_invalid_options_fail_before_any_work_naming_the_option(
    tmp_path: Path, overrides: list[str], option: str
) -> None:
    cfg = compose_train(overrides, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(OptionError) as info:
        train(cfg, *prepare(cfg))  # the cosine schedule's bound is checked when the optimiser is made, before step 1
    assert str(info.value).startswith(option)
    if "trainer.max_steps" not in option:
        assert not (tmp_path / "cache").exists()  # no demo photo written, no LR made


def test_unknown_keys_are_rejected(tmp_path: Path, demo_cache: Path) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="learning_rate"):
        compose_train(["model.learning_rate=1"], tmp_path, demo_cache)


def _fixed_batch(datamodule) -> dict:
    datamodule.prepare_data()
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def test_one_training_step_lowers_the_loss(tmp_path: Path, demo_cache: Path) -> None:
    cfg = compose_train(TINY_TRAIN, tmp_path, demo_cache)
    torch.manual_seed(0)
    datamodule, module, _ = prepare(cfg)
    batch = _fixed_batch(datamodule)
    optimizer = module.optimizer_factory(module.parameters())

    def loss() -> torch.Tensor:
        return module.loss_fn(module(batch["lr"][0]), batch["lr"], batch["hr"], module.duals)["loss"]

    before = loss()
    optimizer.zero_grad()
    module.training_step(batch, 0).backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert torch.isfinite(before) and after < before


def test_model_summary_counts_the_flops_of_one_training_lr_patch(tmp_path: Path, demo_cache: Path) -> None:
    """Lightning's summary (on by default) ran the primal on nothing and printed `Total FLOPs: 0`."""
    from pytorch_lightning.utilities.model_summary import ModelSummary

    cfg = compose_train([*TINY_TRAIN, "trainer.enable_model_summary=true"], tmp_path, demo_cache)
    datamodule, module, trainer = prepare(cfg)
    train(cfg, datamodule, module, trainer)
    lr = int(cfg.data.patch_size) // int(cfg.scale)
    assert tuple(module.example_input_array.shape) == (1, 3, lr, lr)
    convs: list[int] = []  # 2 x multiply-adds of every convolution, counted by hand

    def count(conv: torch.nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        kh, kw = conv.kernel_size
        convs.append(2 * out.numel() * conv.in_channels // conv.groups * kh * kw)

    hooks = [m.register_forward_hook(count) for m in module.primal.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module.primal(module.example_input_array)
    for hook in hooks:
        hook.remove()
    assert ModelSummary(module).total_flops == sum(convs) > 0


def test_dual_false_trains_without_duals(tmp_path: Path, demo_cache: Path) -> None:
    cfg = compose_train([*TINY_TRAIN, "model.dual=false"], tmp_path, demo_cache)
    datamodule, module, _ = prepare(cfg)
    assert module.duals is None
    batch = _fixed_batch(datamodule)
    with torch.no_grad():
        terms = module.loss_fn(module(batch["lr"][0]), batch["lr"], batch["hr"], module.duals)
    assert float(terms["dual"]) == 0.0 and torch.equal(terms["loss"], terms["primal"])  # the primal L1 alone


def test_fit_then_resume_restores_step_optimizer_and_scheduler(tmp_path: Path, demo_cache: Path) -> None:
    import pytorch_lightning as pl

    first = compose_train([*TINY_TRAIN, "logger=csv"], tmp_path / "run", demo_cache)
    datamodule, module, trainer = prepare(first)
    trainer.fit(module, datamodule=datamodule)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2

    second = compose_train(
        [*TINY_TRAIN, "trainer.max_steps=4", "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "run", demo_cache
    )
    seen: dict = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            opt = trainer.optimizers[0]
            seen["step"] = trainer.global_step
            seen["adam_steps"] = float(next(iter(opt.state.values()))["step"])
            seen["sched_epoch"] = trainer.lr_scheduler_configs[0].scheduler.last_epoch

        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
            seen.setdefault("batches", []).append((trainer.current_epoch, trainer.global_step))

    datamodule, module, trainer = prepare(second)
    trainer.callbacks.append(Probe())
    trainer.fit(module, datamodule=datamodule, ckpt_path=second.ckpt_path)
    # Steps 3 and 4 run in the second epoch: the finished first epoch is not replayed.
    assert seen == {"step": 2, "adam_steps": 2.0, "sched_epoch": 2, "batches": [(1, 2), (1, 3)]}
    assert trainer.global_step == 4
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4


def test_a_checkpoint_reloads_as_lightning_users_do(tmp_path: Path, demo_cache: Path) -> None:
    """`DRNLitModule.load_from_checkpoint(path)` with no arguments rebuilds P and D_i from the saved config."""
    from drn_lightning.models import load_weights
    from drn_lightning.training.module import DRNLitModule

    cfg = compose_train([*TINY_TRAIN, "logger=csv"], tmp_path / "run", demo_cache)
    datamodule, module, trainer = prepare(cfg)
    trainer.fit(module, datamodule=datamodule)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    reloaded = DRNLitModule.load_from_checkpoint(last)
    assert isinstance(reloaded, DRNLitModule) and reloaded.name == "drn_tiny" and reloaded.scale == 4
    assert not reloaded.training and reloaded.hparams["net"]["variant"] == "drn_tiny"  # ready for inference
    assert reloaded.hparams["loss"]["dual_weight"] == 0.1 and reloaded.hparams["optimizer"]["lr"] == 2e-3
    for key, value in module.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key].to(value.dtype), value.contiguous()), key
    primal, duals, _ = load_weights(last)  # and the plain-network loader still reads the same file
    assert duals is not None and torch.equal(primal.head.weight, reloaded.primal.head.weight.contiguous())
    lr = torch.rand(1, 3, 12, 12) * 255
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(lr)[-1], primal.eval()(lr)[-1])


def test_ckpt_path_last_without_a_checkpoint_names_the_folder_and_auto_starts_fresh(
    tmp_path: Path, demo_cache: Path
) -> None:
    with pytest.raises(OptionError, match=rf"ckpt_path='last': no last\*\.ckpt in {tmp_path / 'run' / 'checkpoints'}"):
        prepare(compose_train([*TINY_TRAIN, "ckpt_path=last"], tmp_path / "run", demo_cache))
    cfg = compose_train(TINY_TRAIN, tmp_path / "run", demo_cache)
    prepare(cfg)
    assert cfg.ckpt_path is None  # `auto` (the default) with nothing to resume: a fresh start


def test_ckpt_path_null_refuses_to_overwrite_an_earlier_runs_last_ckpt(tmp_path: Path, demo_cache: Path) -> None:
    # Lightning turns fit(ckpt_path=None) into "last" when an OnExceptionCheckpoint (our PreemptionCheckpoint) is
    # there: a "fresh" start would silently resume, or overwrite the earlier run's last.ckpt.
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"an earlier run")
    with pytest.raises(OptionError, match=rf"ckpt_path=null: {folder} holds last\.ckpt of an earlier run"):
        prepare(compose_train([*TINY_TRAIN, "ckpt_path=null"], tmp_path / "run", demo_cache))
    assert (folder / "last.ckpt").read_bytes() == b"an earlier run"
    cfg = compose_train([*TINY_TRAIN, "ckpt_path=null"], tmp_path / "fresh", demo_cache)
    prepare(cfg)
    assert cfg.ckpt_path is None


def test_cosine_schedule_spans_the_run(tmp_path: Path, demo_cache: Path) -> None:
    cfg = compose_train([*TINY_TRAIN, "trainer.max_steps=5", "trainer.max_epochs=3"], tmp_path, demo_cache)
    datamodule, module, trainer = prepare(cfg)
    lrs = []

    import pytorch_lightning as pl

    class LrProbe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer.callbacks.append(LrProbe())
    trainer.fit(module, datamodule=datamodule)
    peak, floor = cfg.model.optimizer.lr, cfg.model.scheduler.eta_min
    import math

    expected = [floor + (peak - floor) * (1 + math.cos(math.pi * t / 5)) / 2 for t in range(5)]
    assert lrs == pytest.approx(expected)


# ---------------------------------------------------------------- end-to-end, as users run it (slow)


def _metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "version_0" / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_ddp_two_cpu_processes_run_the_default_steps_to_the_end(tmp_path: Path, demo_cache: Path) -> None:
    """Two CPU ranks with the default final evaluation (and Set5 when ../shared is there): exit 0, eval.json
    written once with the scores a single-process evaluation of the same weights gives."""
    from drn_lightning.data import BenchmarkDataset
    from drn_lightning.eval import evaluate, model_upscaler
    from drn_lightning.models import load_weights

    run_dir = tmp_path / "ddp"
    result = run_module(
        "drn_lightning.train",
        [
            *[o for o in TINY_TRAIN if o != "test_after_fit=false"],
            *CPU_DDP,
            "trainer.limit_val_batches=null",
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={demo_cache}",
        ],
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and len([c for c in ckpts if c.startswith("best")]) == 1
    assert [p.name for p in run_dir.glob("csv*")] == ["csv"]  # rank 0 alone wrote logs
    logged = [float(r["val/psnr"]) for r in _metrics_rows(run_dir) if r.get("val/psnr")]
    assert len(logged) == 1
    assert result.stdout.count("run directory:") == 1  # the final evaluation ran once
    # The synced metric and eval.json equal a single-process evaluation of the same weights on all images.
    primal, _, _ = load_weights(run_dir / "checkpoints" / "last.ckpt")
    sets = {"demo": BenchmarkDataset(demo_cache / "demo", "val", 4)}
    if BENCHMARKS_DIR.is_dir():
        sets["Set5"] = BenchmarkDataset(BENCHMARKS_DIR, "Set5", 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the run (experiment=demo: torch_threads=1); conv sums depend on the thread count
    try:
        single = evaluate(model_upscaler(primal.eval()), sets, 4, round_y=True)
    finally:
        torch.set_num_threads(threads)
    assert logged[0] == pytest.approx(single["demo"]["psnr"], abs=1e-3)
    report = json.loads((run_dir / "eval.json").read_text())
    assert sorted(report) == sorted(sets)
    for name in sets:
        assert report[name]["model"]["psnr"] == pytest.approx(single[name]["psnr"], abs=1e-6)
        assert report[name]["images"] == single[name]["images"]


@pytest.mark.slow
def test_multirun_over_rho_report_wandb_group_and_notebook(
    tmp_path: Path, demo_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_module(
        "drn_lightning.train",
        [
            "-m",
            "data=semi",
            "data.unpaired_ratio=0,0.5",
            *[o for o in TINY_TRAIN if o != "test_after_fit=false"],
            "logger=many",
            "eval_extra_sets=[]",
            f"hydra.sweep.dir={sweep_dir}",
            f"paths.cache_dir={demo_cache}",
        ],
        cwd=REPO_ROOT,
        env={"HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    report = run_module("drn_lightning.report", [str(sweep_dir)], cwd=REPO_ROOT)
    assert report.returncode == 0, report.stderr
    rows = json.loads((sweep_dir / "report.json").read_text())
    assert [r["data.unpaired_ratio"] for r in rows] == [0.0, 0.5]
    for row, job in zip(rows, ("0", "1")):
        evaluation = json.loads((sweep_dir / job / "eval.json").read_text())
        # data=semi scores its target (the held-out photos on Nearest LR) first, bicubic LR for reference
        assert {"demo_nearest", "demo_bicubic"} <= set(evaluation)
        assert evaluation["demo_nearest"]["degradation"] == "nearest"
        assert row["demo_nearest/psnr"] == pytest.approx(evaluation["demo_nearest"]["model"]["psnr"])
        assert row["demo_bicubic/psnr"] == pytest.approx(evaluation["demo_bicubic"]["model"]["psnr"])
    png = sweep_dir / "psnr_vs_unpaired_ratio.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Both W&B runs of the sweep carry the sweep directory as their group.
    groups = set()
    for job in ("0", "1"):
        (run_file,) = (sweep_dir / job / "wandb").glob("offline-run-*/run-*.wandb")
        groups |= {r.run.run_group for r in read_wandb_records(run_file) if r.WhichOneof("record_type") == "run"}
    assert groups == {str(sweep_dir)}
    # The analysis notebook runs on this sweep and draws both the rho plot and the training curves.
    nb = execute_notebook(
        REPO_ROOT / "notebooks" / "sweep_analysis.ipynb", tmp_path, monkeypatch, {"DRN_MULTIRUN": str(sweep_dir)}
    )
    figures = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(figures) == 2
    assert any("2 runs with curves" in o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


def test_sweep_notebook_is_stored_without_outputs() -> None:
    nb = json.loads((REPO_ROOT / "notebooks" / "sweep_analysis.ipynb").read_text())
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"] if c["cell_type"] == "code")


def read_wandb_records(path: Path) -> list:
    """Decode a W&B offline `.wandb` file: a LevelDB-style log of protobuf `Record`s in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a header: the writer padded to the next block
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.mark.slow
def test_wandb_runs_offline_and_logs_config_losses_and_metrics(tmp_path: Path, demo_cache: Path) -> None:
    run_dir = tmp_path / "wb"
    env = {"WANDB_API_KEY": "", "HOME": str(tmp_path)}  # no account, no cached login
    result = run_module(
        "drn_lightning.train",
        [*TINY_TRAIN, "logger=wandb", f"hydra.run.dir={run_dir}", f"paths.cache_dir={demo_cache}"],
        cwd=REPO_ROOT,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    records = read_wandb_records(runs[0])
    config_keys = {u.key for r in records if r.WhichOneof("record_type") == "config" for u in r.config.update}
    assert {"model", "data", "scale"} <= config_keys
    history = {
        item.key or "/".join(item.nested_key)
        for r in records
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }
    assert {"train/loss", "train/dual", "val/psnr", "val/demo/psnr", "val/demo/ssim"} <= history
    assert any(k.startswith("val/images") for k in history)


def test_slurm_launcher_composes(tmp_path: Path, demo_cache: Path) -> None:
    from hydra import compose, initialize_config_dir

    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert "submitit" in launcher._target_.lower() and "Slurm" in launcher._target_
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)


def _real_lr_folder(folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir()
    Image.fromarray(data.coffee()[::3, ::3]).save(folder / "real_a.jpg")
    Image.fromarray(data.chelsea()[::2, ::2]).save(folder / "real_b.png")
    return folder


def test_adapt_real_finetunes_pretrained_weights_on_unpaired_real_lr(tmp_path: Path, demo_cache: Path) -> None:
    from drn_lightning.models import build_drn, official_to_checkpoint

    torch.manual_seed(3)
    pretrained, pretrained_duals = build_drn("drn_tiny", 4)
    weights = tmp_path / "pretrained.ckpt"
    official_to_checkpoint(
        pretrained, pretrained_duals, {"variant": "drn_tiny", "scale": 4, "n_feats": 8, "n_blocks": 4}, weights
    )
    real = _real_lr_folder(tmp_path / "real")
    overrides = [
        "experiment=adapt_real",
        f"weights={weights}",
        f"real_lr_dir={real}",
        *[o for o in TINY_TRAIN if o != "experiment=demo"],
        "data.batch_size=10",
        "data.patch_size=32",
    ]
    cfg = compose_train(overrides, tmp_path / "run", demo_cache)
    assert cfg.model.optimizer.lr == 1e-5
    datamodule, module, _ = prepare(cfg)
    for ours, theirs in zip(module.primal.state_dict().values(), pretrained.state_dict().values()):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(module.duals.state_dict().values(), pretrained_duals.state_dict().values()):
        assert torch.equal(ours, theirs)  # the paper's adaptation starts from pretrained P and D
    batch = _fixed_batch(datamodule)
    assert int((~batch["paired"]).sum()) == 3  # rho 0.3 of a batch of 10
    assert {batch["name"][i] for i in range(10) if not batch["paired"][i]} <= {"real_a.jpg", "real_b.png"}
    batch = datamodule.on_before_batch_transfer(batch, 0)
    loss = module.training_step(batch, 0)
    assert loss.isfinite()
    # The unpaired samples are trained by the dual loss alone: the step's loss is the masked one.
    with torch.no_grad():
        outputs = module(batch["lr"][0])
        masked = module.loss_fn(outputs, batch["lr"], batch["hr"], module.duals, batch["paired"])["loss"]
        unmasked = module.loss_fn(outputs, batch["lr"], batch["hr"], module.duals, None)["loss"]
    assert float(loss) == pytest.approx(float(masked), rel=1e-5) and abs(float(masked) - float(unmasked)) > 1e-3


def test_adapt_real_without_a_folder_names_the_option(tmp_path: Path, demo_cache: Path) -> None:
    cfg = compose_train(["experiment=adapt_real"], tmp_path, demo_cache)  # the paired data is the demo's
    with pytest.raises(OptionError, match=r"^real_lr_dir='\?\?\?': required"):
        prepare(cfg)


@pytest.mark.slow
def test_headline_command_starts_on_the_files_div2k_and_flickr2k_ship(
    tmp_path: Path, demo_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`model=drn_l scale=8` on a fake DF2K laid out as the official archives unpack (X2, X3, X4, no X8) and no
    Set5: the x8 level is built from the HR before training (one line says so), Set5 is a warning, training runs."""
    import logging

    from PIL import Image
    from skimage import data

    photo = np.tile(data.astronaut(), (1, 2, 1))[:136, :200]  # 200x136: divisible by 8 after no crop
    hr_dir, lr_dir = tmp_path / "DF2K" / "DF2K_train_HR", tmp_path / "DF2K" / "DF2K_train_LR_bicubic"
    for index in range(2):
        hr = np.roll(photo, 37 * index, axis=1)
        hr_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(hr).save(hr_dir / f"{index:04d}.png")
        for s in (2, 3, 4):
            crop = torch.from_numpy(np.ascontiguousarray(hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s]))
            lr = imresize(crop.permute(2, 0, 1).contiguous(), scale=1 / s)
            (lr_dir / f"X{s}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(lr.permute(1, 2, 0).numpy()).save(lr_dir / f"X{s}" / f"{index:04d}x{s}.png")
    valid = tmp_path / "DIV2K" / "DIV2K_valid_HR"
    valid.mkdir(parents=True)
    for stem in range(801, 811):
        Image.fromarray(photo[:64, :64]).save(valid / f"{stem:04d}.png")
    overrides = ["model=drn_l", "scale=8", f"paths.data_dir={tmp_path}", f"paths.benchmarks_dir={tmp_path}/none",
                 "trainer.accelerator=cpu", "trainer.max_steps=1", "data.patch_size=64", "data.batch_size=2",
                 "data.num_workers=0", "data.persistent_workers=false", "trainer.enable_progress_bar=false",
                 "test_after_fit=false", "data.steps_per_epoch=1", "trainer.max_epochs=1"]  # fmt: skip
    cfg = compose_train(overrides, tmp_path / "run", demo_cache, demo=False)
    with caplog.at_level(logging.INFO):
        metrics = train(cfg, *prepare(cfg))
    assert metrics["global_step"] == 1 and "val/DIV2K_val/psnr" in metrics
    assert "x8" in caplog.text and "made from the HR with MATLAB bicubic" in caplog.text
    assert "validation set Set5 left out" in caplog.text
