"""Crash-safe writing: every file the project writes goes through `atomic_write`, so no reader ever sees half a file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from fsspec.utils import get_protocol

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # what open() would give; mkstemp alone makes files 0600


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write via a temporary file of its own in the same folder, fsynced and renamed: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename made durable, where the filesystem lets a folder be opened
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


class OutputExistsError(ValueError):
    """An output that would replace an existing file or an input of the same command: refused before any work."""


def file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode): the same file whatever the spelling (links, `..`, case-insensitive names); None if absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_file(a: Path, b: Path) -> bool:
    """One file however spelled: equal `file_id`s, or equal resolved paths when one does not exist yet."""
    ids = file_id(a), file_id(b)
    if None not in ids:
        return ids[0] == ids[1]
    return os.path.normcase(a.resolve()) == os.path.normcase(b.resolve())


def claim_output(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]] = (),
    overwrite: bool = False,
    option: str = "-o",
    instead: str = "another file",
) -> Path:
    """`path` if it may be written: never over an input (`(option, path)` pairs), nor an existing file unless told."""
    out = Path(path)
    shown = f"{option}{'' if option.endswith('=') or not option else ' '}{out}"
    for name, source in inputs:
        if source is not None and _same_file(out, Path(source)):
            raise OutputExistsError(f"{shown}: is an input of this command ({name}); choose {instead}")
    if out.exists() and not overwrite:
        hint = "overwrite=true" if option.endswith("=") else "--overwrite"
        raise OutputExistsError(f"{shown}: exists; pass {hint} to replace it")
    return out


def is_remote(path: str | os.PathLike[str]) -> bool:
    """An fsspec URL such as s3://, gs:// or memory://: read and written through fsspec, never as a local folder."""
    return get_protocol(os.fspath(path)) not in ("file", "local")


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/drn_lightning` (else ~/.cache): derived data never goes beside the user's own files."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "drn_lightning"


def write_json(data: Any, path: str | os.PathLike[str]) -> Path:
    """JSON with sorted keys and a final newline, written atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode()))
