"""glibc's allocator kept from returning tensors' memory to the system while sktransfer works.

A forward or training pass allocates and frees buffers of megabytes for every layer.
glibc ``malloc`` serves such blocks with ``mmap`` and returns them at ``free``, so the
next pass pays a page fault for every 4 KiB page again: on the CPU this took half the
time of Lite0's forward at 224 px and a fifth of a training step at 64 px
(docs/benchmarks.md, "The allocator"). PyTorch's tuning guide advises jemalloc or
tcmalloc for this; :func:`keep_freed_memory` gets the same effect from glibc, inside
sktransfer's calls only:

- on entry, large blocks come from the heap (``M_MMAP_MAX=0``) and freed memory stays
  there for reuse (``M_TRIM_THRESHOLD`` 1 GiB);
- on exit, ``mmap`` is allowed again with glibc's largest dynamic threshold (32 MiB,
  trim threshold 64 MiB: what glibc's own adjustment converges to once tensors of that
  size were freed), and ``malloc_trim(0)`` hands the free memory back to the system.

Nested and concurrent calls (threads) share one scope. Elsewhere than glibc (macOS,
Windows, musl) it does nothing; ``SKTRANSFER_TUNE_MALLOC=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

INSIDE = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30))
# glibc's defaults: at most 65536 mmapped blocks; DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
# systems, and the trim threshold its dynamic adjustment pairs with it (twice)
OUTSIDE = ((M_MMAP_MAX, 65536), (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 64 << 20))

_lock = threading.Lock()
_depth = 0
_libc = None


def glibc():
    """The process's glibc (``ctypes.CDLL``), or None where the C library is another."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(None)
            lib.gnu_get_libc_version  # only glibc has it
            lib.mallopt, lib.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            lib = False
        _libc = lib
    return _libc or None


def enabled():
    """Whether :func:`keep_freed_memory` acts: glibc, and ``SKTRANSFER_TUNE_MALLOC`` not 0."""
    return os.environ.get("SKTRANSFER_TUNE_MALLOC", "1").strip().lower() not in {"0", "false", "no", "off"} \
        and glibc() is not None


def _set(options):
    lib = glibc()
    for option, value in options:
        lib.mallopt(option, value)


@contextlib.contextmanager
def keep_freed_memory():
    """A scope in which freed tensor memory stays in the process (see the module's text)."""
    global _depth
    if not enabled():
        yield
        return
    with _lock:
        if _depth == 0:
            _set(INSIDE)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(OUTSIDE)
                glibc().malloc_trim(0)


def keeping_freed_memory(fn):
    """Decorator: ``fn`` runs inside :func:`keep_freed_memory`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with keep_freed_memory():
            return fn(*args, **kwargs)
    return wrapper
