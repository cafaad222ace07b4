"""The library internals listed in docs/library_internals.md still behave as we rely on."""

from __future__ import annotations

import inspect

import torch
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from drn_lightning.models import DRN
from drn_lightning.models.weights import DIGEST_KEY, _plain_state_dict, safe_load


def test_state_dict_metadata_survives_save_and_is_ignored_by_strict_loading(tmp_path) -> None:
    """The digest rides in `_metadata`; torch keeps it through save/load and `load_state_dict` ignores extra entries."""
    net = DRN(scale=2, n_feats=4, n_blocks=1)
    state = _plain_state_dict(net)
    assert DIGEST_KEY in state._metadata  # type: ignore[attr-defined]
    torch.save(state, tmp_path / "w.pt")
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)
    assert DIGEST_KEY in loaded._metadata
    DRN(scale=2, n_feats=4, n_blocks=1).load_state_dict(loaded, strict=True)
    assert set(safe_load(tmp_path / "w.pt")) == set(net.state_dict())


def test_lightning_subprocess_launcher_keeps_its_rank_processes_and_reruns_argv() -> None:
    """`procs` holds the started ranks, and the command it runs is built from `sys.argv` (sweep_job_ranks)."""
    from lightning_fabric.plugins.environments import LightningEnvironment
    from lightning_fabric.strategies.launchers import subprocess_script

    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    assert launcher.procs == []
    assert "sys.argv[1:]" in inspect.getsource(subprocess_script._hydra_subprocess_cmd)  # the ranks' command


def test_checkpoint_io_remove_checkpoint_is_the_hook_model_checkpoint_deletes_through() -> None:
    """ModelCheckpoint removes old files with `trainer.strategy.remove_checkpoint` -> `CheckpointIO.remove_checkpoint`."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.strategies import Strategy

    assert "strategy.remove_checkpoint" in inspect.getsource(ModelCheckpoint)
    assert "checkpoint_io.remove_checkpoint" in inspect.getsource(Strategy.remove_checkpoint)


def test_checkpoint_loop_progress_layout_and_every_checkpoint_passes_the_checkpoint_io() -> None:
    """`at_step_boundary` rewrites these counters in `AtomicCheckpointIO`, which every save and every resume goes
    through, the resume before Lightning restores the loops (test_resume_exact.py checks the resumed runs themselves)."""
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import Strategy
    from pytorch_lightning.trainer.connectors.checkpoint_connector import _CheckpointConnector

    loop = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False).fit_loop.state_dict()
    counters = {"ready", "started", "processed", "completed"}
    for key in ("epoch_progress", "epoch_loop.batch_progress", "epoch_loop.val_loop.batch_progress"):
        assert set(loop[key]["total"]) == set(loop[key]["current"]) == counters, key
    assert "is_last_batch" in loop["epoch_loop.batch_progress"]
    assert "_batches_that_stepped" in loop["epoch_loop.state_dict"]
    assert "strategy.load_checkpoint(" in inspect.getsource(_CheckpointConnector.resume_start)
    assert "checkpoint_io.load_checkpoint(" in inspect.getsource(Strategy.load_checkpoint)
    assert "checkpoint_io.save_checkpoint(" in inspect.getsource(Strategy.save_checkpoint)
    run = inspect.getsource(pl.Trainer._run)
    assert run.index("_restore_modules_and_callbacks") < run.index("restore_training_state()")
    assert "restore_loops()" in inspect.getsource(_CheckpointConnector.restore_training_state)
