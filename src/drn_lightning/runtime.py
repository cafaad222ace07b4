"""Process-wide settings owned by the entry points (never by models or glue): CPU threads and memory reuse."""

from __future__ import annotations

import ctypes
import logging
import sys

import torch

from drn_lightning.checks import integer

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _glibc() -> ctypes.CDLL | None:
    """The running process's C library when it is glibc (mallopt's parameters are glibc's), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):  # musl and other C libraries have no gnu_get_libc_version
        return None
    version.restype = ctypes.c_char_p
    return libc if version() and hasattr(libc, "mallopt") else None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel after every step.

    By default each tensor above glibc's mmap threshold is a fresh mapping whose pages the kernel must fault in
    and zero again on every step: ~150,000 page faults per DRN-S x4 CPU step (batch 4, HR 192), about 5 % of
    the step. Served from the heap with trimming off, a training loop reuses the same pages from step to step;
    the price is that RSS stays at its peak until the process ends. Returns False where this is not glibc.
    """
    libc = _glibc()
    if libc is None:
        log.info("keep_freed_memory: not glibc, allocator left as it is")
        return False
    # No mmap for large blocks (they come from the heap); -1 = never trim the heap's top (man mallopt).
    # Allocations a non-main arena cannot hold still fall back to mmap inside glibc, so nothing can fail.
    ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    if not ok:
        log.warning("keep_freed_memory: glibc refused mallopt; allocator left as it is")
    return ok


def apply_process_settings(torch_threads: int | None, keep_memory: bool) -> None:
    """Entry-point settings for the training process, from the config's `torch_threads` and `keep_freed_memory`."""
    if torch_threads is not None:
        torch.set_num_threads(integer(torch_threads, "torch_threads", 1))
    if not isinstance(keep_memory, bool):
        raise ValueError(f"keep_freed_memory={keep_memory!r} must be true or false")
    if keep_memory:
        keep_freed_memory()
