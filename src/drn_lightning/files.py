"""Crash-safe writing: every file the project writes goes through `atomic_write`, so no reader ever sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from fsspec.utils import get_protocol

__all__ = ["atomic_write", "is_remote", "write_json"]


def _umask_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _umask_file_mode()  # what open() would give; mkstemp alone makes files 0600


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write `path` through a uniquely named temporary file in its folder: write, fsync, rename, fsync the folder.

    A crash or an error leaves the previous file (or none) and no partial one; concurrent writers never share a
    temporary name. Errors propagate after the temporary file is removed.
    """
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
    _fsync_dir(path.parent)
    return path


def is_remote(path: str | os.PathLike[str]) -> bool:
    """An fsspec URL such as s3://, gs:// or memory://: read and written through fsspec, never as a local folder."""
    return get_protocol(os.fspath(path)) not in ("file", "local")


def write_json(data: Any, path: str | os.PathLike[str]) -> Path:
    """JSON with sorted keys and a final newline, written atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode()))
