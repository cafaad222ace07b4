"""Process-wide settings owned by the entry points (never by models or glue): memory reuse by glibc."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    """The running process's C library when it is glibc (mallopt's parameters are glibc's), else None."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no C library loadable by name (Windows)
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None  # not musl, not macOS


def keep_freed_memory() -> bool:
    """Make glibc reuse freed pages, not fault in ~10^5 new ones a step (RSS stays at its peak); False if not glibc."""
    libc = _glibc()
    if libc is None:
        log.info("keep_freed_memory: not glibc, allocator left as it is")
        return False
    # No mmap for large blocks, never trim the heap's top (man mallopt); what an arena cannot hold still gets mmap.
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    if not ok:
        log.warning("keep_freed_memory: glibc refused mallopt; allocator left as it is")
    return ok
