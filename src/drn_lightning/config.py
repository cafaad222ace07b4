"""What no constructor can check: missing options, cross-group facts, and the files and folders a run reads and
writes. Runs before anything is built; each constructor checks its own arguments (`drn_lightning.train` names
them as typed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from drn_lightning.models.drn import SUPPORTED_SCALES
from drn_lightning.models.official import CheckpointError, safe_load

INPUT_PATH_KEYS = ("hr_dir", "lr_dir", "root")  # data inputs that must exist (outputs and caches are made)
OUTPUT_DIR_KEYS = ("dirpath", "save_dir", "default_root_dir", "output_dir")  # folders the run writes into
TORCH_FILE_KEYS = ("weights", "dual_weights", "ckpt_path")
CKPT_PATH_WORDS = ("last", "hpc")  # Lightning's own names for checkpoints it finds itself


class ConfigError(ValueError):
    """An invalid option; the message names the option as typed on the command line and what is allowed."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every plain leaf; nodes built by Hydra (`_target_`) and unresolvable values
    (`${hydra:...}` outside a Hydra run) are skipped."""
    if isinstance(node, DictConfig):
        if "_target_" in node and prefix.rsplit(".", 1)[-1] in INPUT_PATH_KEYS:
            return  # a folder made on first use (the demo photos)
        for key in node:
            try:
                value = node[key]
            except Exception:
                continue
            yield from _leaves(value, f"{prefix}.{key!s}")
    elif isinstance(node, ListConfig):
        for index, item in enumerate(node):
            yield from _leaves(item, f"{prefix}[{index}]")
    else:
        yield prefix, node


def validate_train_config(cfg: DictConfig) -> None:
    """Reject missing options, an unsupported scale, an untrainable model, an unbounded schedule, and input or
    output paths that cannot be used, naming each option."""
    try:
        missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
        _require(not missing, f"missing required option(s): {', '.join(f'{k}=...' for k in missing)}")
        _validate(cfg)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as err:
        raise ConfigError(
            f"missing required option: {str(err.msg or err).splitlines()[0]} (needed by {err.full_key})"
        ) from None


def _validate(cfg: DictConfig) -> None:
    scale = cfg.get("scale")
    _require(scale in SUPPORTED_SCALES, f"scale={scale!r} is not supported; allowed: {list(SUPPORTED_SCALES)}")
    _require(
        "_target_" in cfg.model, f"model={cfg.model.get('name')} has no network to train; use drn_s, drn_l or drn_tiny"
    )
    trainer = cfg.trainer
    if cfg.model.get("scheduler") is not None:
        bounded = int(trainer.get("max_steps") or -1) > 0 or int(trainer.get("max_epochs") or -1) > 0
        _require(
            bounded,
            "set trainer.max_steps or trainer.max_epochs to a positive number: the cosine schedule needs a bounded run",
        )
    if cfg.get("nonfinite_check") == "device":  # the model's check needs the optimiser and precision to agree
        _require(
            bool(cfg.model.optimizer.get("fused")),
            "nonfinite_check=device needs model.optimizer.fused=true (a fused optimiser skips a step on the device)",
        )
        _require(
            str(trainer.get("precision")) not in ("16-mixed", "16"),
            f"nonfinite_check=device cannot be used with trainer.precision={trainer.precision} "
            "(its GradScaler skips non-finite steps itself); use nonfinite_check=host or auto",
        )
    for key, value in _leaves(cfg.data, "data"):
        if key.rsplit(".", 1)[-1] in INPUT_PATH_KEYS and value not in (None, ""):
            _require(Path(str(value)).exists(), f"{key}={value!r}: path does not exist")
    check_torch_files(cfg)
    check_output_dirs(cfg)


def _unwritable_reason(path: Path) -> str | None:
    """Why files cannot be created under ``path`` (None if they can), from its nearest existing ancestor."""
    probe = path.expanduser().absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def check_output_dirs(cfg: DictConfig) -> None:
    """Every output folder (run dir, checkpoint and logger folders) must be creatable and writable now,
    so a bad path fails at start rather than at the first checkpoint save."""
    for group in ("paths", "trainer", "callbacks", "logger"):
        for key, value in _leaves(cfg.get(group), group):
            if key.rsplit(".", 1)[-1] in OUTPUT_DIR_KEYS and value not in (None, ""):
                reason = _unwritable_reason(Path(str(value)))
                _require(reason is None, f"{key}={str(value)!r}: cannot write there: {reason}")


def check_torch_files(cfg: DictConfig) -> None:
    """``weights``, ``dual_weights`` and a ``ckpt_path`` file must exist and load with ``weights_only=True`` now:
    a file whose unpickling would run code, or an empty/truncated/corrupt one, is refused before anything is built."""
    for key in TORCH_FILE_KEYS:
        value = cfg.get(key)
        if value is None or value in CKPT_PATH_WORDS:
            continue
        _require(Path(str(value)).is_file(), f"{key}={value!r}: file not found")
        try:
            safe_load(str(value))
        except CheckpointError as err:
            raise ConfigError(f"{key}: {err}") from None
