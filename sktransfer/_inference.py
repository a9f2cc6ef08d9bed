"""The one path that runs a network without gradients: transform, predict, validation, precompute.

Every batch goes through :func:`run_batches`: no autograd, autocast on CUDA,
the batch-size invariance of :func:`batch_invariant`, and batches halved when
the device runs out of memory (:class:`~sktransfer._device.HalvingOnOOM`), with
freed memory kept in the process (:mod:`sktransfer._allocator`), and outputs
checked for NaN and inf (:class:`_FiniteOutputs`: a float16 overflow is run
again in float32).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._allocator import keeping_freed_memory
from ._device import HalvingOnOOM, amp_dtype, autocast, module_device
from .data._batches import GPU_BATCH_INPUT_PIXELS, prepared_batches


def gpu_batch_size(image_size, input_pixels=None):
    """A batch for forward passes on a GPU: about 2**24 pixels, so that kernel launches are
    amortised (docs/benchmarks.md), and for arrays, which reach the GPU at their own size before
    they are resized there, at most ``GPU_BATCH_INPUT_PIXELS`` of theirs; a power of two in [16, 256]."""
    fits = 2**24 // (image_size * image_size)
    if input_pixels:
        fits = min(fits, GPU_BATCH_INPUT_PIXELS // input_pixels)
    return power_of_two_below(fits, 16, 256)


def predict_batch_size(batch_size, device, image_size, input_pixels=None):
    """A training ``batch_size`` for forward passes alone: on a GPU at least :func:`gpu_batch_size`
    (batches of 64 left the H200 waiting for kernel launches: 2.2-2.5x, docs/benchmarks.md)."""
    return batch_size if device.type == "cpu" else max(batch_size, gpu_batch_size(image_size, input_pixels))


def power_of_two_below(n, lo, hi):
    """The power of two nearest below ``n``, within ``[lo, hi]``."""
    return min(hi, max(lo, 1 << max(n, 1).bit_length() - 1))


def batch_invariant(fn, x):
    """``fn(x)``, with a batch of one image run as a batch of two.

    CPU kernels pick another algorithm for a single image; its results differ
    from the batched ones in the 6th digit. Doubling a lone image keeps every
    sample's output independent of how the data was split into batches.
    """
    if x.shape[0] != 1:
        return fn(x)
    return fn(torch.cat([x, x]))[:1]


@keeping_freed_memory
def run_batches(fn, batches, device, emit, trainable_outputs=False, queue=True):
    """Call ``emit(start, stop, out)`` with ``fn``'s float32 CPU output for each
    ``(start, stop, x)`` of ``batches``, in order.

    ``trainable_outputs=True`` runs under ``no_grad`` instead of
    ``inference_mode``: the outputs then feed layers that train (a precomputed
    frozen prefix), which inference tensors cannot.

    On a GPU with ``queue=True``, each output is copied back asynchronously into
    page-locked memory and handed to ``emit`` once the next batch is queued: the
    CPU prepares and launches batch k+1 while the GPU runs batch k. ``emit``
    must not keep the tensor it is given (each holds a page-locked block;
    :class:`_Rows` copies it into one tensor);
    ``queue=False`` copies each output back before the next batch starts, into
    ordinary memory, for outputs that are kept. On the CPU ``emit`` is called
    as soon as each batch is done.
    """
    run = HalvingOnOOM(lambda b: batch_invariant(fn, b))
    finite = _FiniteOutputs(run, device)
    mode = torch.no_grad() if trainable_outputs else torch.inference_mode()
    queued = None
    with mode, autocast(device):
        for start, stop, x in batches:
            out = run(x)
            host, copied = _to_host(out) if queue else (out.float().cpu(), None)
            if queued is not None:  # the previous batch, now that this one is queued
                _emit_when_copied(emit, finite, *queued)
                queued = None
            if copied is None:
                emit(start, stop, finite(start, stop, x, host))
            else:
                queued = (start, stop, x if finite.reruns else None, host, copied)
        if queued is not None:
            _emit_when_copied(emit, finite, *queued)


def _to_host(out):
    """``(out as float32 on the CPU, a CUDA event marking the copy done or None)``.

    From a GPU the copy is asynchronous, into page-locked memory (with the
    asynchronous input copy of :func:`~sktransfer.data._preprocessing.to_device_async`).
    """
    out = out.float()
    if out.device.type != "cuda":
        return out.cpu(), None
    host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
    host.copy_(out, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(out.device))  # the copy's stream, on any cuda:N
    return host, copied


def _emit_when_copied(emit, finite, start, stop, x, out, copied):
    copied.synchronize()
    emit(start, stop, finite(start, stop, x, out))


class NonFiniteOutput(ValueError):
    """A network's output was NaN or inf in float32 (:class:`_FiniteOutputs`)."""


def finite_values(tensor):
    """Whether ``tensor`` holds no NaN and no inf: a min and a max, with no boolean copy of it."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)  # NaN propagates to both
    return bool(torch.isfinite(low) & torch.isfinite(high))


class _FiniteOutputs:
    """Checks each batch's output for NaN and inf on the CPU, where it arrives anyway.

    Under float16 autocast (GPUs of compute capability 7.x), whose range ends at
    65504, a batch that overflowed is run again in float32 by ``run`` (the pass's
    :class:`HalvingOnOOM`: a limit it learns in float32 also bounds the later
    batches of the pass), and one ``RuntimeWarning``
    per call says so; ``reruns`` says whether inputs must be kept until their
    output is checked. An output that is not finite in float32 raises
    :class:`NonFiniteOutput`: a network never hands back NaN or inf as features or
    predictions.
    """

    def __init__(self, run, device):
        self.run, self.device = run, device
        self.reruns = amp_dtype(device) == torch.float16
        self.warned = False

    def __call__(self, start, stop, x, out):
        if finite_values(out):
            return out
        if self.reruns:
            with torch.autocast(self.device.type, enabled=False):
                out = self.run(x).float().cpu()
            if not self.warned:
                warnings.warn(
                    f"The network's output for rows {start}-{stop - 1} overflowed float16 autocast (GPUs of "
                    "compute capability 7.x, such as V100 and T4, compute in float16, whose range ends at "
                    "65504); such batches are run again in float32.", RuntimeWarning, stacklevel=2)
                self.warned = True
            if finite_values(out):
                return out
        raise NonFiniteOutput(
            f"The network's output for rows {start}-{stop - 1} is not finite (NaN or inf) in float32: its "
            "weights, or its activations on these images, are not finite or overflow. Fit the estimator "
            "again, or check the weights of your own backbone."
        )


def _indexed_batches(data, indices, batch_size):
    for start in range(0, len(indices), batch_size):
        stop = min(start + batch_size, len(indices))
        yield start, stop, data.batch(indices[start:stop])


def forward_batches(fn, source, spec, device, batch_size, channels_last, num_workers, emit):
    """:func:`run_batches` over the prepared batches of an image source, in order."""
    batches = prepared_batches(source, spec, batch_size, device, channels_last, num_workers)
    run_batches(fn, batches, device, emit)


class _Rows:
    """An ``emit`` for :func:`run_batches` that copies each batch's output into one float32 CPU
    tensor of ``n`` rows, made at the first batch (its other dimensions are the output's). No
    batch's tensor is kept: from a GPU they arrive in page-locked blocks that are reused."""

    def __init__(self, n, progress=None):
        self.n, self.progress, self.out = n, progress, None

    def __call__(self, start, stop, out):
        if self.out is None:
            with torch.inference_mode(False):  # a normal tensor for the caller, not an inference one
                self.out = torch.empty((self.n, *out.shape[1:]), dtype=torch.float32)
        self.out[start:stop] = out
        if self.progress is not None:
            self.progress.update(stop - start)


def extract(fn, source, spec, device, batch_size, channels_last=True, progress=None, num_workers=0):
    """``fn``'s 2-D output for every image of ``source`` as a float32 numpy array."""
    rows = _Rows(len(source), progress)
    forward_batches(fn, source, spec, device, batch_size, channels_last, num_workers, rows)
    return rows.out.numpy()


def predict_images(net, source, spec, device, batch_size, num_workers=0):
    """``net``'s outputs (eval mode, moved to ``device`` if needed) for every image of ``source``."""
    if module_device(net) != device:
        net.to(device)
    net.eval()
    rows = _Rows(len(source))
    # channels_last only on CUDA: on the CPU its kernels made predictions depend on the batch size
    # (~1e-6, scikit-learn's check_methods_subset_invariance)
    forward_batches(net, source, spec, device, batch_size, device.type == "cuda", num_workers, rows)
    return rows.out


def predict_logits(net, data, indices, device, batch_size):
    """``net``'s outputs (eval mode) for the prepared images at ``indices`` (validation scores)."""
    net.eval()
    indices = np.asarray(indices)
    rows = _Rows(len(indices))
    run_batches(net, _indexed_batches(data, indices, batch_size), device, rows)
    return rows.out if rows.out is not None else torch.empty(0)


def precompute(fn, net, data, device, batch_size, indices=None):
    """``fn`` applied once to every prepared image (or those at ``indices``),
    ``net`` in eval mode, on the CPU."""
    net.eval()
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    rows = _Rows(len(indices))
    run_batches(fn, _indexed_batches(data, indices, batch_size), device, rows, trainable_outputs=True, queue=False)
    return rows.out
