"""What no constructor can check (missing options, cross-group facts, paths), and `build`, naming options as typed."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.utils import get_protocol
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from drn_lightning.files import is_remote
from drn_lightning.models.drn import SUPPORTED_SCALES
from drn_lightning.models.official import CheckpointError, safe_load

INPUT_PATH_KEYS = ("hr_dir", "lr_dir", "root")  # data inputs that must exist (outputs and caches are made)
OUTPUT_DIR_KEYS = ("dirpath", "save_dir", "default_root_dir", "output_dir")  # folders the run writes into
DF2K_LAYOUT = (
    "lay DF2K out under paths.data_dir as DF2K/DF2K_train_HR/0001.png and DF2K/DF2K_train_LR_bicubic/X4/0001x4.png "
    "(X2, X8 alike), or give data.train.hr_dir=<HR folder> data.train.lr_dir=null (LR made with MATLAB bicubic)"
)
DIV2K_VAL_LAYOUT = (
    "put DIV2K's validation images under paths.data_dir as DIV2K/DIV2K_valid_HR/0801.png ... 0810.png (the hold-out "
    "that selects checkpoints), or leave it out with ~data.val_sets.DIV2K_val"
)


class ConfigError(ValueError):
    """An invalid option; the message names the option as typed on the command line and what is allowed."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every plain leaf, skipping values that cannot resolve outside a Hydra run."""
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
    """Refuse, naming the option, what would fail later: missing options, cross-group facts, unusable paths."""
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
    threads, keep_memory = cfg.get("torch_threads"), cfg.get("keep_freed_memory", False)  # the entry point's own
    _require(
        threads is None or (type(threads) is int and threads >= 1), f"torch_threads={threads!r} must be an integer >= 1"
    )
    _require(isinstance(keep_memory, bool), f"keep_freed_memory={keep_memory!r} must be true or false")
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
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    if cfg.data.get("global_batch") and isinstance(devices, int) and devices > 0 and isinstance(nodes, int):
        _require(
            int(cfg.data.batch_size) % (devices * nodes) == 0,
            f"data.batch_size={cfg.data.batch_size} (data.global_batch=true) must split evenly over "
            f"trainer.devices x trainer.num_nodes = {devices * nodes} ranks",
        )
    for key, value in _leaves(cfg.data, "data"):
        if key.rsplit(".", 1)[-1] in INPUT_PATH_KEYS and value not in (None, ""):
            hint = f"; {DF2K_LAYOUT}" if key.startswith("data.train.") and "DF2K" in str(value) else ""
            hint = f"; {DIV2K_VAL_LAYOUT}" if key.startswith("data.val_sets.") and "DIV2K" in str(value) else hint
            _require(Path(str(value)).exists(), f"{key}={value!r}: path does not exist{hint}")
    check_torch_files(cfg)
    check_output_dirs(cfg)


def unwritable_reason(value: str) -> str | None:
    """Why files cannot be created under `value` (None if they can); for a URL, whether its fsspec filesystem exists."""
    if is_remote(value):
        try:
            fsspec.get_filesystem_class(get_protocol(value))
        except (ImportError, ValueError) as err:
            return str(err)
        return None
    probe = Path(value).expanduser().absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def check_output_dirs(cfg: DictConfig) -> None:
    """Every output folder must be writable now, so a bad path fails at start, not at the first checkpoint save."""
    for group in ("paths", "trainer", "callbacks", "logger"):
        for key, value in _leaves(cfg.get(group), group):
            if key.rsplit(".", 1)[-1] in OUTPUT_DIR_KEYS and value not in (None, ""):
                reason = unwritable_reason(str(value))
                _require(reason is None, f"{key}={str(value)!r}: cannot write there: {reason}")


def check_torch_files(cfg: DictConfig) -> None:
    """`weights`, `dual_weights` and a `ckpt_path` file must load with `weights_only=True` before anything is built."""
    for key in ("weights", "dual_weights", "ckpt_path"):
        value = cfg.get(key)
        if value is None or value in ("auto", "last", "hpc"):  # found in the run folder (train, Lightning)
            continue
        try:
            loaded = safe_load(str(value))  # a local file or an fsspec URL
        except FileNotFoundError:
            raise ConfigError(f"{key}={value!r}: file not found") from None
        except CheckpointError as err:
            raise ConfigError(f"{key}: {err}") from None
        if key == "ckpt_path" and not (isinstance(loaded, dict) and "pytorch-lightning_version" in loaded):
            raise ConfigError(
                f"ckpt_path={value!r}: weights only, no training state to resume (a `drn-sr convert` or exported "
                f"file?); to start from these weights use weights={value} instead"
            )


def _as_typed(cfg: DictConfig, node: str, message: str) -> str:
    """A constructor's `arg=value ...` message under the option as typed (the source key of an `${interpolation}`)."""
    arg = re.match(r"([\w.]+)(?=[=:])", message)
    if not arg:
        return f"{node}: {message}"
    key = f"{node}.{arg[1]}"
    parent, _, leaf = key.rpartition(".")
    holder = OmegaConf.select(cfg, parent)
    if isinstance(holder, DictConfig) and leaf in holder and OmegaConf.is_interpolation(holder, leaf):
        source = re.fullmatch(r"\$\{([\w.]+)\}", str(holder._get_node(leaf)._value()))  # type: ignore[union-attr]
        key = source[1] if source else key
    return key + message[len(arg[1]) :]


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate(cfg[key])`; an invalid argument becomes a ConfigError naming the option (Hydra knows its path)."""
    from drn_lightning.reliability import RUN_FAILURES

    try:
        return instantiate(OmegaConf.select(cfg, key), **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, RUN_FAILURES) or not isinstance(cause, ValueError | TypeError | OSError):
            raise cause or err from None  # unreadable data, a bad checkpoint, ...: the run's failure path
        where = re.search(r"full_key: (\S+)", str(err))
        raise ConfigError(_as_typed(cfg, where[1] if where else key, str(cause))) from None


def check_monitors(cfg: DictConfig, model: Any, datamodule: Any) -> None:
    """A callback's `monitor` must be a metric DRNLitModule logs, so a typo fails now, not after the first epoch."""
    from drn_lightning.lit_module import DRNLitModule  # here: `python -m drn_lightning.eval` starts without Lightning

    if type(model) is not DRNLitModule:  # another module logs other names
        return
    sets = getattr(datamodule, "val_set_names", None) or ["val"]
    logged = {"val/psnr", "train/loss", "train/primal", "train/dual", "epoch", "step"}
    logged |= {f"val/{name}/{metric}" for name in sets for metric in ("psnr", "ssim", "psnr_bicubic")}
    for key, node in (cfg.get("callbacks") or {}).items():
        monitor = node.get("monitor") if isinstance(node, DictConfig) else None
        if monitor is not None and monitor not in logged:
            raise ConfigError(
                f"callbacks.{key}.monitor={monitor!r} is not a metric this run logs; allowed: {', '.join(sorted(logged))}"
            )
