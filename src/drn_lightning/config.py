"""Up-front checks of a composed run config, so a bad option fails before any data is read or model built."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from drn_lightning.models.drn import SUPPORTED_SCALES
from drn_lightning.models.official import VARIANTS

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
    policy = cfg.get("nonfinite_loss", "raise")
    _require(policy in ("raise", "skip"), f"nonfinite_loss={policy!r}; allowed: raise, skip")
    for key in ("weights", "dual_weights"):
        value = cfg.get(key)
        _require(value is None or Path(str(value)).is_file(), f"{key}={value!r}: file not found")
    ckpt = cfg.get("ckpt_path")
    _require(ckpt in (None, "last", "hpc") or Path(str(ckpt)).is_file(), f"ckpt_path={ckpt!r}: file not found")
