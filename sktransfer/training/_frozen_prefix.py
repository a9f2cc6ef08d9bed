"""Frozen prefix: run the frozen stages once per fit, train only what follows.

When the first ``k`` backbone stages are frozen and see no augmentation, their
output for an image is the same in every epoch.  :func:`frozen_prefix` then
computes it once and returns a network that starts from it:

* all stages frozen: the pooled features (:class:`HeadOnly`);
* some stages frozen: the activation at the stage boundary, when the backbone
  decomposes into a chain of modules there (:func:`module_chain`, verified on a
  probe) and the activations fit in ``PREFIX_CACHE_BYTES``.

Anything else keeps the ordinary path (the whole network in every step).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._inference import precompute
from ..backbones._chain import module_chain
from ..backbones._pooling import pool
from ..data._batches import gather, resident
from ._freezing import train_mode

PREFIX_CACHE_BYTES = 2 * 2**30


def split_chain(chain, frozen):
    """Index ``j`` such that ``chain[:j]`` holds only frozen parameters and the
    rest none; ``None`` when no such boundary exists or a prefix module is random
    in training mode (dropout), which a computed-once output would not be."""
    owner = []
    for name, module in chain:
        names = {f"{name}.{p}" for p, _ in module.named_parameters()}
        if not names:
            owner.append(None)
        elif names <= frozen:
            owner.append(True)
        elif names.isdisjoint(frozen):
            owner.append(False)
        else:
            return None
    trainable = [i for i, o in enumerate(owner) if o is False]
    last_frozen = max((i for i, o in enumerate(owner) if o is True), default=-1)
    j = last_frozen + 1
    if last_frozen < 0 or (trainable and trainable[0] < j):
        return None
    if any(_is_random(m) for _, module in chain[:j] for m in module.modules()):
        return None
    return j


def _is_random(module):
    p = getattr(module, "p", None) if isinstance(module, nn.modules.dropout._DropoutNd) else None
    p = getattr(module, "drop_prob", p)  # timm's DropPath
    return bool(p)


class SuffixNet(nn.Module):
    """The trainable rest of a :class:`~sktransfer.TransferNet`, from a stage boundary."""

    def __init__(self, net, modules):
        super().__init__()
        self.net = net
        self.suffix = nn.Sequential(*modules)

    def features(self, x):
        return pool(self.suffix(x), self.net.pooling)

    def classify(self, features):
        return self.net.classify(features)

    def forward(self, x):
        return self.classify(self.features(x))

    def train(self, mode=True):
        # frozen BatchNorm layers stay in eval mode, as in the full network
        if mode:
            train_mode(self.net)
        else:
            self.net.eval()
        self.training = mode
        return self


def frozen_prefix(net, data, n_frozen, device, batch_size):
    """``(network, data)`` to train on: the prefix computed once when it can be.

    ``data`` serves prepared images; its first two verify the decomposition.
    Returns ``(net, data)`` unchanged when the frozen prefix cannot be computed once.
    """
    backbone = net.backbone
    if n_frozen >= len(backbone.stages):
        return HeadOnly(net), FeatureData(precompute(net.features, net, data, device, batch_size), device)
    if n_frozen == 0:
        return net, data
    probe = data.batch(np.arange(min(2, len(data))))
    chain = module_chain(backbone, probe)
    j = None if chain is None else split_chain(chain, net.frozen_parameters_)
    if not j:
        return net, data
    prefix = nn.Sequential(*(m for _, m in chain[:j]))
    with torch.no_grad():
        backbone.eval()
        width = math.prod(prefix(probe[:1]).shape[1:])
    if len(data) * width * 4 > PREFIX_CACHE_BYTES:
        return net, data
    features = precompute(prefix, net, data, device, batch_size)
    return SuffixNet(net, [m for _, m in chain[j:]]), FeatureData(features, device)


class HeadOnly(nn.Module):
    """The dropout and head of a :class:`TransferNet`, applied to precomputed features."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def features(self, features):
        return features

    def classify(self, features):
        return self.net.classify(features)

    def forward(self, features):
        return self.net.classify(features)

    def train(self, mode=True):
        # the backbone stays in eval mode: only dropout and the head train
        for module in self.net.head_modules():
            module.train(mode)
        self.training = mode
        return self


class FeatureData:
    """Precomputed features (or activations) served in batches, like :class:`PreparedImages`."""

    def __init__(self, features, device):
        self.features = resident(features, device)
        self.device = device

    def __len__(self):
        return len(self.features)

    def batch(self, indices):
        return gather(self.features, indices, self.device)
