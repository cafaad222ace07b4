"""Building a run from its config (`build`) and the few facts no constructor owns: missing options, output folders."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import fsspec
from fsspec.utils import get_protocol
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from drn_lightning.files import is_remote
from drn_lightning.options import OptionError, first_line


def leaves(node: Any, prefix: str) -> Iterator[tuple[str, Any, DictConfig | None]]:
    """(dotted key, value, parent node) of every leaf; values that cannot resolve outside a Hydra run are skipped."""
    if isinstance(node, DictConfig):
        for key in node:
            try:
                value = node[key]
            except Exception:
                continue
            if isinstance(value, DictConfig | ListConfig):
                yield from leaves(value, f"{prefix}.{key!s}".lstrip("."))
            else:
                yield f"{prefix}.{key!s}".lstrip("."), value, node
    elif isinstance(node, ListConfig):
        for index, item in enumerate(node):
            if isinstance(item, DictConfig | ListConfig):
                yield from leaves(item, f"{prefix}[{index}]")
            else:
                yield f"{prefix}[{index}]", item, None


def as_typed(cfg: DictConfig, err: BaseException, under: str = "") -> BaseException:
    """An OptionError under the key a user types (`model.net.scale=${scale}` -> `scale`); other errors pass through."""
    if not isinstance(err, OptionError):
        return err
    for key, value, parent in leaves(OmegaConf.select(cfg, under) if under else cfg, under):
        leaf = key.rsplit(".", 1)[-1]
        if (key == err.key or key.endswith(f".{err.key}")) and value == err.value and parent is not None:
            raw = cast(dict, OmegaConf.to_container(parent, resolve=False))[leaf]
            source = re.fullmatch(r"\$\{([\w.]+)\}", str(raw))
            return OptionError(source[1] if source else key, err.value, err.reason)
    return err


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate(cfg[key])`; an OptionError from any constructor in the tree is raised under the option as typed."""
    try:
        return instantiate(OmegaConf.select(cfg, key), **kwargs)
    except InstantiationException as err:
        cause: BaseException = err
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:  # nested `_target_`s
            cause = cause.__cause__
        raise as_typed(cfg, cause, key) from None


def _missing(node: DictConfig, prefix: str = "") -> Iterator[str]:
    """Dotted keys of `???` values, found without resolving anything (an interpolation may read one)."""
    for key in map(str, node):
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig) and key != "hydra":
            yield from _missing(node[key], f"{prefix}{key}.")


def check_missing(cfg: DictConfig) -> None:
    """Every `???` option, as the user types it (`real_lr_dir`, not the interpolation that reads it)."""
    missing = sorted(_missing(cfg))
    if missing:
        raise OptionError(missing[0], "???", f"required; give {' '.join(f'{k}=...' for k in missing)}")


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
        for key, value, _ in leaves(cfg.get(group), group):
            if key.endswith((".dirpath", ".save_dir", ".default_root_dir", ".output_dir")) and value not in (None, ""):
                reason = unwritable_reason(str(value))
                if reason is not None:
                    raise OptionError(key, str(value), f"cannot write there: {reason}")


def check_monitors(cfg: DictConfig, logged: set[str]) -> None:
    """A callback's `monitor` must be a metric the module logs, so a typo fails now, not after the first epoch."""
    for key, node in (cfg.get("callbacks") or {}).items():
        monitor = node.get("monitor") if isinstance(node, DictConfig) else None
        if monitor is not None and monitor not in logged:
            raise OptionError(
                f"callbacks.{key}.monitor", monitor, f"not a metric this run logs; allowed: {', '.join(sorted(logged))}"
            )


def _closest_keys(config_name: str, key: str, argv: list[str]) -> list[str]:
    """Valid keys of the config composed from the other overrides that look like `key` (a mistyped option)."""
    GlobalHydra.instance().clear()
    overrides = [a for a in argv if "=" in a and not a.lstrip("+~").startswith(key) and not a.startswith("-")]
    try:
        with initialize_config_dir(str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
    except Exception:
        return []
    dotted = [k.split("[")[0] for k, _, _ in leaves(cfg, "")]  # a list option is one key (`data.sets`)
    keys = {k.rsplit(".", n)[0] for k in dotted for n in range(k.count(".") + 1)}
    return difflib.get_close_matches(key, keys, n=3, cutoff=0.6)


def entry_point(task: Callable[[], Any], config_name: str) -> None:
    """Run a `@hydra.main` task; Hydra's own errors (a mistyped key, bad syntax) become one `error:` line, exit 2."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises instead of printing a report and exiting 1
    try:
        task()
    except ConfigCompositionException as err:
        key = str(getattr(err.__cause__, "full_key", "") or "")  # a mistyped key; else bad syntax and the like
        close = _closest_keys(config_name, key, sys.argv[1:]) if key else []
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        print(f"error: {f'{key}: no such option{hint}' if key else first_line(err)}", file=sys.stderr)
        sys.exit(2)
