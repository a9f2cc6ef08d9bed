"""glibc's allocator kept from returning tensors' memory to the system while sktransfer works.

A forward or training pass allocates and frees buffers of megabytes for every layer.
glibc ``malloc`` maps blocks above its mmap threshold and unmaps them at ``free``, and
trims the top of its heap when more than the trim threshold lies free there; either way
the next batch pays a page fault for every 4 KiB page again. On the CPU this took more
than half the time of Lite0's forward at 224 px and a quarter of a training step at 64 px
(docs/benchmarks.md, "The allocator"). PyTorch's tuning guide advises preloading jemalloc
or tcmalloc for this; :func:`keep_freed_memory` gets the effect from glibc while
sktransfer's calls run:

- on entry, large blocks come from the heap (``M_MMAP_MAX=0``) and freed memory stays
  there for reuse (``M_TRIM_THRESHOLD`` 1 GiB). These are process-wide settings: other
  threads allocate under them too while the call runs;
- on exit, ``mmap`` is allowed again above a fixed threshold of 32 MiB (the ceiling of
  glibc's own dynamic threshold on 64-bit systems) with a trim threshold of 64 MiB, and
  ``malloc_trim(0)`` returns the free memory to the system when more than 64 MiB of it
  lies in the heap. glibc's dynamic thresholds stay off from the first call on: any
  ``mallopt`` of these settings turns them off, and they cannot be turned back on.

Nested and concurrent calls (threads) share one scope. It does nothing elsewhere than
glibc's malloc (macOS, Windows, musl, or jemalloc/tcmalloc preloaded), when the user set
glibc's malloc settings (``MALLOC_*_`` variables or ``glibc.malloc`` tunables), which it
would overwrite, or with ``SKTRANSFER_TUNE_MALLOC=0``.
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
# at most 65536 mmapped blocks (glibc's default); the largest dynamic mmap threshold of
# 64-bit glibc, and the trim threshold its dynamic adjustment pairs with it (twice)
OUTSIDE = ((M_MMAP_MAX, 65536), (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 64 << 20))
TRIM_ABOVE = 64 << 20  # free bytes in the heap worth a malloc_trim on exit
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_depth = 0
_libc = None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def glibc():
    """glibc (``ctypes.CDLL``) when its ``malloc`` serves this process, else None."""
    global _libc
    if _libc is None:
        try:
            process, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
            libc.gnu_get_libc_version, libc.mallopt, libc.malloc_trim  # noqa: B018 (only glibc has them)
            # a preloaded allocator (jemalloc, tcmalloc) answers the process's malloc
            same = ctypes.cast(process.malloc, ctypes.c_void_p).value == ctypes.cast(libc.malloc, ctypes.c_void_p).value
            lib = libc if same else False
        except (OSError, AttributeError, TypeError):  # no such library; Windows' CDLL(None) is a TypeError
            lib = False
        if lib and hasattr(lib, "mallinfo2"):
            lib.mallinfo2.restype = _MallInfo2
        _libc = lib
    return _libc or None


def enabled():
    """Whether :func:`keep_freed_memory` acts (see the module's text)."""
    if os.environ.get("SKTRANSFER_TUNE_MALLOC", "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return glibc() is not None


def _set(options):
    lib = glibc()
    return all(lib.mallopt(option, value) == 1 for option, value in options)


def _trim():
    lib = glibc()
    if not hasattr(lib, "mallinfo2") or lib.mallinfo2().fordblks > TRIM_ABOVE:
        lib.malloc_trim(0)


def _enter():
    global _depth
    with _lock:
        if _depth == 0 and not _set(INSIDE):
            _set(OUTSIDE)
            return False
        _depth += 1
        return True


def _leave():
    global _depth
    with _lock:
        _depth -= 1
        if _depth == 0:
            _set(OUTSIDE)
            _trim()


@contextlib.contextmanager
def keep_freed_memory():
    """A scope in which freed tensor memory stays in the process (see the module's text)."""
    entered = enabled() and _enter()
    try:
        yield
    finally:
        if entered:
            _leave()


def keeping_freed_memory(fn):
    """Decorator: ``fn`` runs inside :func:`keep_freed_memory`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with keep_freed_memory():
            return fn(*args, **kwargs)
    return wrapper


def _after_fork_in_child():
    """A child forked inside a scope (DataLoader workers) starts outside it, with a fresh lock."""
    global _lock, _depth
    _lock = threading.Lock()
    if _depth and glibc() is not None:
        _set(OUTSIDE)
    _depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
