"""Backbone input batches: prepared once when they fit in memory, decoded per batch otherwise.

Arrays need no decoding and are prepared in the main process, a batch at a
time. Files are decoded one at a time and prepared in groups
(:func:`prepare_indices`), in the main process or, a whole batch each, in
``torch.utils.data.DataLoader`` workers while the main process runs the
network on the previous batches; only ``prefetch_factor`` batches per worker
are in flight, so memory does not grow with the number of files.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from numbers import Integral

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ._preprocessing import draft_side, prepare_batch, prepare_images, to_device_async

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


def resolve_num_workers(num_workers, source, batch_size):
    """Worker processes for ``source``: 0 for arrays, which need no decoding.

    For files, ``"auto"`` means half the cores (at most ``MAX_AUTO_WORKERS``)
    for more than one batch on a machine with at least 4 cores, otherwise 0;
    always 0 in a daemonic process (a Dask worker), which cannot start children.
    On 2 cores a worker process (one thread) only competes with the network's
    threads: measured slower than decoding in the main process (docs/benchmarks.md).
    """
    num_workers = check_num_workers(num_workers)
    if not source.decodes_files:
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
    """A prepared batch on ``device`` (from the CPU to a GPU an asynchronous copy from page-locked
    memory), channels_last when asked."""
    x = to_device_async(x, device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def prepare_indices(source, indices, spec, device, channels_last=False):
    """The backbone input for ``source[indices]`` (a slice or index array).

    Files are decoded one at a time and resized on the CPU, in groups of equal
    size of at most ``GROUP_BYTES`` of input (a larger image alone): a batch of
    large photographs never sits in memory at full size, and the result does
    not depend on ``num_workers``.
    """
    if not source.decodes_files:
        return prepare_batch(source.batch(indices), spec, device, channels_last)
    if isinstance(indices, slice):
        indices = range(*indices.indices(len(source)))
    side = draft_side(spec)
    decoded = (source.batch([i], side)[0] for i in indices)
    return to_device(prepare_images(decoded, spec, torch.device("cpu"), channels_last), device, channels_last)


class _PreparedBatches(Dataset):
    """Batch ``k`` of ``source`` prepared by :func:`prepare_indices` (what a worker process returns)."""

    def __init__(self, source, spec, batch_size):
        self.source = source
        self.spec = spec
        self.batch_size = batch_size

    def __len__(self):
        return -(-len(self.source) // self.batch_size)

    def __getitem__(self, k):
        start = k * self.batch_size
        stop = min(start + self.batch_size, len(self.source))
        return prepare_indices(self.source, slice(start, stop), self.spec, torch.device("cpu"))


def prepared_batches(source, spec, batch_size, device, channels_last=False, num_workers=0):
    """Yield ``(start, stop, x)``: the backbone input for ``source[start:stop]``, in order.

    With ``num_workers > 0`` whole batches are prepared in worker processes by
    the same :func:`prepare_indices` as in the main process.
    """
    n = len(source)
    if num_workers == 0:
        # no thread preparing the next batch meanwhile: measured slower on 2 cores, where it only
        # competes with the network's threads (docs/benchmarks.md); worker processes do that for files
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield start, stop, prepare_indices(source, slice(start, stop), spec, device, channels_last)
        return
    loader = DataLoader(
        _PreparedBatches(source, spec, batch_size), batch_size=None, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda", prefetch_factor=2,
        generator=torch.Generator(),  # worker seeds must not draw from the global RNG (random_state)
    )
    for k, x in enumerate(loader):
        start = k * batch_size
        yield start, start + len(x), to_device(x, device, channels_last)


PREPARED_CACHE_BYTES = 2 * 2**30
GPU_BATCH_INPUT_PIXELS = 2**26  # of arrays in one batch to a GPU, where they are resized


class PreparedImages:
    """Normalised backbone inputs for an :class:`ImageSource`.

    When all images, resized, fit in ``PREPARED_CACHE_BYTES`` they are prepared
    once (float32; image files decoded in ``num_workers`` processes) and epochs
    only index them; otherwise each batch is decoded and resized when asked for.
    For a GPU the prepared images wait on it when they fit there
    (:func:`fits_on_gpu`), else on the CPU; arrays are resized on it either way.
    """

    def __init__(self, source, spec, device, channels_last, num_workers=0):
        self.source = source
        self.spec = spec
        self.device = device
        self.channels_last = channels_last
        size = spec.image_size
        self.cache = None
        shape = (len(source), 3, size, size)
        nbytes = math.prod(shape) * 4
        if nbytes <= PREPARED_CACHE_BYTES:
            where = device if fits_on_gpu(nbytes, device) else torch.device("cpu")
            # arrays are resized on the device wherever they wait, so that their values do not depend
            # on the memory free; files are decoded and resized on the CPU anyway
            on = where if source.decodes_files else device
            batch_size = 256
            if on.type != "cpu" and source.input_pixels:  # arrays reach the GPU at their own size
                batch_size = max(1, min(batch_size, GPU_BATCH_INPUT_PIXELS // source.input_pixels))
            self.cache = torch.empty(shape, dtype=torch.float32, device=where)
            for start, stop, x in prepared_batches(source, spec, batch_size, on, num_workers=num_workers):
                self.cache[start:stop] = x

    def __len__(self):
        return len(self.source)

    def batch(self, indices):
        indices = np.asarray(indices)
        if self.cache is not None:
            return gather(self.cache, indices, self.device, self.channels_last)
        return prepare_indices(self.source, indices, self.spec, self.device, self.channels_last)


def batch_indices(n, batch_size, rng=None):
    """Index batches of one epoch; the last batch never holds a single sample.

    A last batch of one sample is merged into the previous one (BatchNorm
    cannot normalise one value per channel in training mode).
    """
    order = rng.permutation(n) if rng is not None else np.arange(n)
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


GPU_RESIDENT_FRACTION = 0.1


def fits_on_gpu(nbytes, device):
    """Whether a dataset of ``nbytes`` waits between batches on ``device``, a GPU: when it takes
    at most ``GPU_RESIDENT_FRACTION`` of the GPU's free memory (blocks that torch holds unused
    count as free), leaving the rest to training. Batches are then indexed there, with no copy
    per step (epochs 14-35% shorter on an H200, docs/benchmarks.md)."""
    if device.type != "cuda":
        return False
    free = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return nbytes <= GPU_RESIDENT_FRACTION * free


def resident(tensor, device):
    """``tensor`` where it waits between batches for ``device``: on the GPU if it
    :func:`fits_on_gpu`, else where it is (each batch is then gathered on the CPU and pinned by
    :func:`to_device`; pinning the whole tensor would not help, as an indexed copy of a
    page-locked tensor is not page-locked)."""
    return tensor.to(device) if fits_on_gpu(tensor.numel() * tensor.element_size(), device) else tensor


def gather(tensor, indices, device, channels_last=False):
    """The rows ``indices`` of a :func:`resident` tensor, on ``device``, channels_last when asked."""
    index = torch.from_numpy(np.asarray(indices))
    if tensor.is_cuda:  # torch would copy a CPU index from pageable memory, waiting for the GPU
        index = index.pin_memory().to(tensor.device, non_blocking=True)
    return to_device(tensor[index], device, channels_last)
