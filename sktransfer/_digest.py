"""One digest of tensors and arrays (embedding-cache keys, checkpoint names)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _update(h, tensor):
    t = tensor.detach().to("cpu").contiguous().reshape(-1)
    h.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    # raw bytes: any dtype (bf16 included, which numpy cannot hold)
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def state_digest(module):
    """Hex digest of every tensor of ``module``'s state dict: names, shapes, dtypes, values."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        _update(h, tensor)
    return h.hexdigest()


def network_digest(module):
    """Hex digest of a network: its class, its structure (``repr``: layers, strides, activations)
    and :func:`state_digest`. Code in a custom ``forward`` is not seen."""
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    return setting_digest(kind, repr(module), state_digest(module))


def array_digest(array):
    """Hex digest of a numpy array or tensor: shape, dtype and values."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(array, torch.Tensor) and array.dtype in (torch.bfloat16,):
        _update(h, array)
        return h.hexdigest()
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()  # same key as the equal numpy array
    array = np.ascontiguousarray(array)
    h.update(str((array.shape, array.dtype.str)).encode())
    h.update(array.tobytes())
    return h.hexdigest()


def row_digests(array):
    """``[array_digest(row) for row in array]`` for a numpy array, faster (one header, no checks)."""
    if len(array) == 0:
        return []
    header = hashlib.blake2b(str((array.shape[1:], array.dtype.str)).encode(), digest_size=16)
    keys = []
    for row in array:
        h = header.copy()
        h.update(row.tobytes())  # tobytes copies in C order, whatever the row's strides
        keys.append(h.hexdigest())
    return keys


def setting_digest(*parts):
    """Hex digest of the ``repr`` of ``parts`` (settings, other digests)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
