"""Training batches: images prepared once when they fit in memory, else per batch."""

from __future__ import annotations

import numpy as np
import torch

from ._device import autocast
from ._loader import prepare_indices, prepared_batches, to_device

PREPARED_CACHE_BYTES = 2 * 2**30


class PreparedImages:
    """Normalised backbone inputs for an :class:`ImageSource`.

    When all images, resized, fit in ``PREPARED_CACHE_BYTES`` they are prepared
    once (CPU, float32; image files decoded in ``num_workers`` processes) and
    epochs only index them; otherwise each batch is decoded and resized when
    asked for.
    """

    def __init__(self, source, spec, device, channels_last, num_workers=0):
        self.source = source
        self.spec = spec
        self.device = device
        self.channels_last = channels_last
        size = spec.image_size
        self.cache = None
        if len(source) * 3 * size * size * 4 <= PREPARED_CACHE_BYTES:
            batches = prepared_batches(source, spec, 256, torch.device("cpu"), num_workers=num_workers)
            parts = [x for _, _, x in batches]
            self.cache = _pinned(torch.cat(parts), device)

    def __len__(self):
        return len(self.source)

    def batch(self, indices):
        indices = np.asarray(indices)
        if self.cache is not None:
            return to_device(self.cache[torch.from_numpy(indices)], self.device, self.channels_last)
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


def precompute(fn, net, data, device, batch_size, indices=None):
    """``fn`` applied once to every prepared image (or those at ``indices``),
    ``net`` in eval mode, kept on the CPU."""
    net.eval()
    out = []
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    with torch.no_grad(), autocast(device):  # not inference_mode: the head trains on these
        for start in range(0, len(indices), batch_size):
            out.append(fn(data.batch(indices[start:start + batch_size])).float().cpu())
    return _pinned(torch.cat(out), device)


def _pinned(tensor, device):
    """Page-locked host memory when batches go to a GPU (asynchronous copies)."""
    return tensor.pin_memory() if device.type == "cuda" else tensor


class FeatureData:
    """Precomputed features (or activations) served in batches, like :class:`PreparedImages`."""

    def __init__(self, features, device):
        self.features = features
        self.device = device

    def __len__(self):
        return len(self.features)

    def batch(self, indices):
        return to_device(self.features[torch.from_numpy(np.asarray(indices))], self.device)
