"""Up-front checks of a composed run config, so a bad option fails before any data is read or model built."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from drn_lightning.models.drn import SUPPORTED_SCALES
from drn_lightning.models.official import VARIANTS, CheckpointError

# Config keys that name inputs which must already exist (outputs and caches are created on demand).
INPUT_PATH_KEYS = ("hr_dir", "lr_dir", "root")


class ConfigError(ValueError):
    """An invalid option; the message names the option as typed on the command line and what is allowed."""


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, resolved value) for every leaf under a config node."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            yield from _walk(node[key], f"{prefix}.{key}")
    elif isinstance(node, ListConfig):
        for index, item in enumerate(node):
            yield from _walk(item, f"{prefix}[{index}]")
    else:
        yield prefix, node


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_train_config(cfg: DictConfig) -> None:
    """Reject invalid scale, model, ratio, patch, path, trainer and loss options, naming each."""
    try:
        missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
        _require(not missing, f"missing required option(s): {', '.join(f'{k}=...' for k in missing)}")
        _validate(cfg)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as err:
        raise ConfigError(f"missing required option: {err.msg.splitlines()[0]} (needed by {err.full_key})") from None


def _validate(cfg: DictConfig) -> None:
    scale = cfg.get("scale")
    _require(scale in SUPPORTED_SCALES, f"scale={scale!r} is not supported; allowed: {list(SUPPORTED_SCALES)}")
    model = cfg.model
    _require(model.get("net") is not None, f"model={model.get('name')} has no network to train; use drn_s, drn_l or drn_tiny")
    variant = model.net.get("variant")
    sizes_given = model.net.get("n_feats") is not None and model.net.get("n_blocks") is not None
    _require(
        variant in VARIANTS and (scale in VARIANTS[variant] or sizes_given),
        f"model.net.variant={variant!r} is not defined at scale={scale}; "
        f"defined: { {k: sorted(v) for k, v in VARIANTS.items()} } (or set model.net.n_feats and model.net.n_blocks)",
    )
    n_feats = model.net.get("n_feats")
    _require(n_feats is None or int(n_feats) >= 4, f"model.net.n_feats={n_feats} must be >= 4")
    n_blocks = model.net.get("n_blocks")
    _require(n_blocks is None or int(n_blocks) >= 1, f"model.net.n_blocks={n_blocks} must be >= 1")
    dual_weight = model.loss.get("dual_weight", 0.1)
    _require(float(dual_weight) >= 0, f"model.loss.dual_weight={dual_weight} must be >= 0")
    lr = model.optimizer.get("lr")
    _require(lr is not None and float(lr) > 0, f"model.optimizer.lr={lr} must be > 0")

    data = cfg.data
    ratio = data.get("unpaired_ratio", 0.0)
    _require(0.0 <= float(ratio) < 1.0, f"data.unpaired_ratio={ratio} must be in [0, 1)")
    patch = data.get("patch_size")
    if patch is not None:
        _require(int(patch) > 0 and int(patch) % int(scale) == 0,
                 f"data.patch_size={patch} must be a positive multiple of scale={scale}")
    batch = data.get("batch_size")
    _require(batch is None or int(batch) >= 1, f"data.batch_size={batch} must be >= 1")
    for key, value in _walk(data, "data"):
        if key.rsplit(".", 1)[-1] in INPUT_PATH_KEYS and value not in (None, ""):
            _require(Path(str(value)).exists(), f"{key}={value!r}: path does not exist")

    trainer = cfg.trainer
    devices = trainer.get("devices")
    _require(devices in ("auto", -1) or isinstance(devices, (list, ListConfig)) or int(devices) >= 1,
             f"trainer.devices={devices!r} must be >= 1, -1, 'auto' or a list of device ids")
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    _require((max_steps is not None and int(max_steps) > 0) or (max_epochs is not None and int(max_epochs) > 0),
             "set trainer.max_steps or trainer.max_epochs to a positive number: the cosine schedule needs a bounded run")
    threads = cfg.get("torch_threads")
    _require(threads is None or int(threads) >= 1, f"torch_threads={threads} must be >= 1 (or null for torch's default)")
    keep = cfg.get("keep_freed_memory", False)
    _require(isinstance(keep, bool), f"keep_freed_memory={keep!r} must be true or false")
    policy = cfg.get("nonfinite_loss", "raise")
    _require(policy in ("raise", "skip"), f"nonfinite_loss={policy!r}; allowed: raise, skip")
    check = cfg.get("nonfinite_check", "auto")
    _require(check in ("auto", "host", "device"), f"nonfinite_check={check!r}; allowed: auto, host, device")
    if check == "device":
        _require(bool(cfg.model.get("optimizer", {}).get("fused")),
                 "nonfinite_check=device needs model.optimizer.fused=true (a fused optimiser skips a step on the device)")
        _require(str(cfg.trainer.get("precision")) not in ("16-mixed", "16"),
                 f"nonfinite_check=device cannot be used with trainer.precision={cfg.trainer.precision} "
                 "(its GradScaler skips non-finite steps itself); use nonfinite_check=host or auto")
    for key in ("weights", "dual_weights"):
        value = cfg.get(key)
        _require(value is None or Path(str(value)).is_file(), f"{key}={value!r}: file not found")
    ckpt = cfg.get("ckpt_path")
    _require(ckpt in (None, "last", "hpc") or Path(str(ckpt)).is_file(), f"ckpt_path={ckpt!r}: file not found")
    check_torch_files(cfg)
    check_output_dirs(cfg)


# Config keys naming folders the run writes into (checkpoints, logs); checked before anything is built.
OUTPUT_DIR_KEYS = ("dirpath", "save_dir", "default_root_dir", "output_dir")


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


def _walk_resolvable(node: DictConfig, prefix: str) -> Iterator[tuple[str, Any]]:
    """Like ``_walk`` over a mapping, skipping values whose interpolation cannot be resolved here
    (``${hydra:...}`` outside a Hydra run)."""
    for key in node.keys():
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - omegaconf raises several interpolation error types
            continue
        if isinstance(value, DictConfig):
            yield from _walk_resolvable(value, f"{prefix}.{key}")
        elif not isinstance(value, ListConfig):
            yield f"{prefix}.{key}", value


def check_output_dirs(cfg: DictConfig) -> None:
    """Every output folder (run dir, checkpoint and logger folders) must be creatable and writable now,
    so a bad path fails at start rather than at the first checkpoint save."""
    for group in ("paths", "trainer", "callbacks", "logger"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        for key, value in _walk_resolvable(node, group):
            if key.rsplit(".", 1)[-1] in OUTPUT_DIR_KEYS and value not in (None, ""):
                reason = _unwritable_reason(Path(str(value)))
                _require(reason is None, f"{key}={str(value)!r}: cannot write there: {reason}")


def check_torch_files(cfg: DictConfig) -> None:
    """``weights``, ``dual_weights`` and a ``ckpt_path`` file must load with ``weights_only=True`` now: a file
    whose unpickling would run code, or an empty/truncated/corrupt one, is refused before anything is built."""
    from drn_lightning.reliability import read_torch_file

    for key in ("weights", "dual_weights", "ckpt_path"):
        value = cfg.get(key)
        if value is None or value in ("last", "hpc"):
            continue
        try:
            read_torch_file(str(value))
        except CheckpointError as err:
            raise ConfigError(f"{key}: {err}") from None
