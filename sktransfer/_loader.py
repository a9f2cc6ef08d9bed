"""Prepared input batches, decoded in DataLoader worker processes for files.

Arrays need no decoding and are prepared in the main process, a batch at a
time. Files are decoded, converted and resized one at a time, in the main
process or in ``torch.utils.data.DataLoader`` workers while the main process
runs the network on the previous batches; only ``prefetch_factor`` batches per
worker are in flight, so memory does not grow with the number of files.
"""

from __future__ import annotations

import multiprocessing
import os
from numbers import Integral

import torch
from torch.utils.data import DataLoader, Dataset

from ._preprocessing import prepare_batch

MAX_AUTO_WORKERS = 4


def check_num_workers(num_workers):
    if isinstance(num_workers, str) and num_workers == "auto":
        return num_workers
    if isinstance(num_workers, bool) or not isinstance(num_workers, Integral) or num_workers < 0:
        raise ValueError(
            f"num_workers must be 'auto' or an int >= 0 (worker processes decoding image files; "
            f"0 decodes in the main process), got {num_workers!r}."
        )
    return int(num_workers)


def decodes_files(source):
    """True when ``source`` (or the subset it views) holds file paths."""
    source = getattr(source, "source", source)  # a cache's SubsetSource
    items = getattr(source, "items", None)
    return items is not None and any(isinstance(it, (str, os.PathLike)) for it in items)


def resolve_num_workers(num_workers, source, batch_size):
    """Worker processes for ``source``: 0 for arrays, which need no decoding.

    For files, ``"auto"`` means half the cores (at most ``MAX_AUTO_WORKERS``)
    for more than one batch on a machine with at least 4 cores, otherwise 0;
    always 0 in a daemonic process (a Dask worker), which cannot start children.
    On 2 cores a worker process (one thread) only competes with the network's
    threads: measured slower than decoding in the main process (docs/benchmarks.md).
    """
    num_workers = check_num_workers(num_workers)
    if not decodes_files(source):
        return 0
    daemon = multiprocessing.current_process().daemon
    if num_workers == "auto":
        cores = os.cpu_count() or 1
        if daemon or len(source) <= batch_size or cores < 4:
            return 0
        return min(MAX_AUTO_WORKERS, cores // 2)
    if num_workers > 0 and daemon:
        raise ValueError(
            f"num_workers={num_workers} starts DataLoader worker processes, but this process "
            "is a daemon (a Dask worker or a multiprocessing pool worker) and cannot start "
            "children. Use num_workers=0 or 'auto' (the Dask workers are the parallelism), or "
            "start the Dask workers with the config distributed.worker.daemon=False."
        )
    return num_workers


def to_device(x, device, channels_last=False):
    """A prepared CPU batch on ``device`` (asynchronous copy), channels_last when asked."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _prepare_item(source, i, spec):
    return prepare_batch(source.batch([i]), spec, torch.device("cpu"))[0]


def prepare_indices(source, indices, spec, device, channels_last=False):
    """The backbone input for ``source[indices]`` (a slice or index array).

    Files are decoded and resized one at a time: a batch of large photographs
    never sits in memory at full size.
    """
    if not decodes_files(source):
        return prepare_batch(source.batch(indices), spec, device, channels_last)
    if isinstance(indices, slice):
        indices = range(*indices.indices(len(source)))
    return to_device(torch.stack([_prepare_item(source, i, spec) for i in indices]), device, channels_last)


class _PreparedItems(Dataset):
    def __init__(self, source, spec):
        self.source = source
        self.spec = spec

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return _prepare_item(self.source, i, self.spec)


def prepared_batches(source, spec, batch_size, device, channels_last=False, num_workers=0):
    """Yield ``(start, stop, x)``: the backbone input for ``source[start:stop]``, in order.

    With ``num_workers > 0`` images are decoded and resized in worker processes
    (the result equals preparing them in the main process, see :func:`prepare_indices`).
    """
    n = len(source)
    if num_workers == 0:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield start, stop, prepare_indices(source, slice(start, stop), spec, device, channels_last)
        return
    loader = DataLoader(
        _PreparedItems(source, spec), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda", prefetch_factor=2,
        generator=torch.Generator(),  # worker seeds must not draw from the global RNG (random_state)
    )
    start = 0
    for x in loader:
        yield start, start + len(x), to_device(x, device, channels_last)
        start += len(x)
