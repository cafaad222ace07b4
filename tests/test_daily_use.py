"""Daily use as lightning-hydra-template users expect: console scripts, tab completion, one-line key errors, debug
configs, the config tree and train.log, tags, filtered noise, and the Optuna search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT, TINY_TRAIN, compose_train
from drn_lightning.train import prepare, train

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def _script(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env={**ENV, **(env or {})}
    )


def test_a_mistyped_key_is_one_line_with_the_closest_valid_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The entry point as `drn-train trainer.max_step=5` runs it (in this process; the command itself: slow test)."""
    from drn_lightning import train as train_module

    monkeypatch.setattr(sys, "argv", ["drn-train", "trainer.max_step=5"])
    with pytest.raises(SystemExit) as info:
        train_module.main()
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: trainer.max_step: no such option; did you mean trainer.max_steps or trainer.max_time or "
        "trainer.max_epochs?"
    ]


@pytest.mark.slow
def test_console_scripts_complete_on_tab_and_log_errors_into_the_run_folder(tmp_path: Path) -> None:
    """`drn-train` is an installed command (Hydra finds `drn_lightning.conf` as a module); Hydra's bash completion,
    bound to its name, lists groups and options; an error line is also in the run folder's train.log."""
    done = _script("drn-train", "-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "drn-train model=drn_"})
    assert done.stdout.split() == ["model=drn_l", "model=drn_s", "model=drn_tiny"]
    done = _script("drn-train", "trainer.max_step=5", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: trainer.max_step: no such option; did you mean")
    done = _script("drn-train", "experiment=demo", "scale=3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == "error: scale=3: allowed: 2, 4, 8"
    assert "error: scale=3: allowed: 2, 4, 8" in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "config_tree.log").read_text().startswith("config")


@pytest.mark.parametrize(
    "debug",
    ["fdr", "overfit", pytest.param("profiler", marks=pytest.mark.slow), pytest.param("limit", marks=pytest.mark.slow)],
)
def test_debug_configs_run(tmp_path: Path, demo_cache: Path, debug: str) -> None:
    tiny = [o for o in TINY_TRAIN if not o.startswith(("trainer.max_", "trainer.limit_", "test_after_fit"))]
    cfg = compose_train([*tiny, f"debug={debug}", "trainer.max_epochs=2"], tmp_path / "run", demo_cache)
    assert cfg.task_name == "debug" and cfg.extras.ignore_warnings is False and cfg.trainer.accelerator == "cpu"
    datamodule, module, trainer = prepare(cfg)
    seen: list[torch.Tensor] = []
    module.on_train_batch_start = lambda batch, idx: seen.append(batch["hr"].clone())  # type: ignore[method-assign]
    metrics = train(cfg, datamodule, module, trainer)
    steps = {"fdr": 1, "overfit": 4, "profiler": 4, "limit": 4}[debug]  # 2 batches per epoch, 2 epochs
    assert metrics["global_step"] == steps and len(seen) == steps
    if debug == "overfit":  # the same batches every epoch, so the loss can fall to zero
        assert all(torch.equal(a, b) for a, b in zip(seen[:2], seen[2:]))
    else:
        assert steps == 1 or not torch.equal(seen[0], seen[2])


def test_tags_reach_the_wandb_logger_and_the_optuna_search_composes(tmp_path: Path, demo_cache: Path) -> None:
    cfg = compose_train(["logger=wandb", "tags=[ablation,x4]"], tmp_path / "run", demo_cache)
    assert list(cfg.logger.wandb.tags) == ["ablation", "x4"]
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        search = compose("train", overrides=["hparams_search=drn_optuna"], return_hydra_config=True)
    assert search.optimized_metric == "val/psnr" and search.hydra.sweeper.direction == "maximize"
    assert set(search.hydra.sweeper.params) == {"model.optimizer.lr", "model.loss.dual_weight"}


@pytest.mark.slow
def test_eval_script_completion_noise_train_log_and_an_optuna_sweep(tmp_path: Path) -> None:
    tiny = [o for o in TINY_TRAIN if o not in ("trainer.enable_progress_bar=false", "test_after_fit=false")]
    assert _script("drn-eval", "--cfg", "job", cwd=tmp_path).stdout.startswith("paths:")
    done = _script("drn-eval", "data.set=[Set5]", cwd=tmp_path)
    assert done.returncode == 2 and "did you mean data.sets" in done.stderr and len(done.stderr.splitlines()) == 1
    done = _script("drn-train", "-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "drn-train debug="})
    assert set(done.stdout.split()) >= {"debug=fdr", "debug=overfit", "debug=profiler", "debug=limit"}
    assert (
        "complete -o nospace -o default -F hydra_bash_completion drn-train"
        in _script("drn-train", "-sc", "install=bash", cwd=tmp_path).stdout
    )
    done = _script("drn-train", *tiny, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    for noise in ("Tip", "_pytree", "v_num", "does not have many workers", "sync_dist"):
        assert noise not in output, noise
    log = (tmp_path / "run" / "train.log").read_text()
    assert "GPU available" in log and "trained 2 steps" in log  # Lightning's messages and ours
    title = "drn_tiny x4 vs bicubic (PSNR/SSIM on Y, 4px shaved)"  # the final evaluation's table: once on the console
    assert log.count(title) == output.count(title) == 1 and "final evaluation, also in" not in output
    assert (tmp_path / "run" / "config_tree.log").read_text().startswith("config")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = [*tiny, "hparams_search=drn_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1"]
    done = _script("drn-train", *sweep, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    psnrs = [json.loads((tmp_path / "sweep" / str(k) / "metrics.json").read_text())["val/psnr"] for k in (0, 1)]
    assert best["best_value"] == pytest.approx(max(psnrs))  # the sweep maximised what the jobs returned


def test_long_steps_report_progress_as_log_lines_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upscaling, downloads, LR levels, decoding: without a terminal, progress is plain lines (every 10 s, at the end)."""
    from drn_lightning.data import prepare

    lines: list[str] = []
    monkeypatch.setattr(prepare, "LOG_EVERY_S", 0.0)
    with prepare.progress("upscaling", 3, "images", emit=lines.append) as advance:
        for _ in range(3):
            advance(1)
    assert lines == [f"upscaling: {n} of 3 images" for n in (1, 2, 3, 3)]


def test_run_guard_writes_the_error_line_to_the_run_log_too(
    tmp_path: Path, demo_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    """Hydra gives the run a file handler (<run dir>/train.log); the one `error:` line goes there as well."""
    import logging

    from drn_lightning.options import OptionError
    from drn_lightning.training.run import run_guard

    cfg = compose_train([*TINY_TRAIN, "extras.print_config=true"], tmp_path / "run", demo_cache)
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as info, run_guard(cfg):
            raise OptionError("model.net.scale", cfg.scale, "made up for this test")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: scale=4: made up for this test\n"  # re-keyed to what one types
    assert "error: scale=4: made up for this test" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "run" / "config_tree.log").read_text().startswith("config")


def test_caches_default_to_the_users_cache_folder_never_beside_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("XDG_CACHE_HOME", "/home/u/.cache")
    monkeypatch.delenv("DRN_CACHE_DIR", raising=False)
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.data_dir=/data"])
    assert cfg.paths.cache_dir == "/home/u/.cache/drn_lightning" and cfg.data.train.cache_dir.startswith("/home/u/")
