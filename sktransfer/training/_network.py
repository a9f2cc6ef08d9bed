"""The network a fine-tuned estimator trains: backbone -> pooling -> dropout -> [hidden] -> head."""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..backbones._pooling import pool

# heads of at most this many weights run in float64 at CPU inference (TransferNet.classify): 32 MiB
# as float64, converted at each call; 1280 features x 1000 classes are 1.3 million
EXACT_HEAD_MAX_PARAMS = 2**22
_PLAIN_HEAD_LAYERS = (nn.Linear, nn.ReLU, nn.Dropout)


class TransferNet(nn.Module):
    """A pretrained :class:`~sktransfer.Backbone` with a new head.

    Parameters
    ----------
    backbone : Backbone
    n_features : int
        Width of the pooled backbone features.
    n_outputs : int
        Width of the new head (number of classes).
    pooling : str or None
    dropout : float
        Dropout before the head (and after each hidden layer).
    hidden : tuple of int, default=()
        Widths of hidden layers (Linear -> ReLU -> Dropout) before the final
        linear layer ``head``; empty: the head is one linear layer.
    """

    def __init__(self, backbone, n_features, n_outputs, pooling="avg", dropout=0.0, hidden=()):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.n_features = int(n_features)
        self.dropout = nn.Dropout(dropout)
        layers, width = [], self.n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)

    @property
    def hidden_sizes(self):
        return tuple(m.out_features for m in self.hidden if isinstance(m, nn.Linear))

    def features(self, x):
        return pool(self.backbone.forward_features(x), self.pooling)

    def classify(self, features):
        """The new head (dropout, hidden layers, last linear layer) on pooled features.

        Inference on the CPU runs the head in float64, rounded back to float32:
        float32 matrix products pick their kernel by the number of rows (a
        sample's scores differed by ~1e-6 between batches of 2 and 20), and a
        prediction must not depend on the batch it came in (scikit-learn's
        ``check_methods_subset_invariance``). Only plain heads of up to
        ``EXACT_HEAD_MAX_PARAMS`` weights are run so (the weights are converted
        at each call); larger or custom heads run in float32.
        """
        if not self._exact_head(features):
            return self.head(self.hidden(self.dropout(features)))
        x = features.double()
        for module in self._head_layers():
            x = _linear64(x, module) if type(module) is nn.Linear else module(x)
        return x.float()

    def _head_layers(self):
        """The head's layers in order: dropout, the hidden layers, the last linear layer."""
        return (self.dropout, *self.hidden, self.head)

    def _exact_head(self, features):
        """Whether :meth:`classify` runs the head in float64: CPU inference with a plain, small head."""
        if features.device.type != "cpu" or torch.is_grad_enabled():
            return False
        modules = self._head_layers()
        if any(m.training for m in modules) or any(type(m) not in _PLAIN_HEAD_LAYERS for m in modules):
            return False
        return sum(m.weight.numel() for m in modules if type(m) is nn.Linear) <= EXACT_HEAD_MAX_PARAMS

    def head_modules(self):
        """The modules of the new head, trained at the head's learning rate."""
        return [self.dropout, self.hidden, self.head]

    def forward(self, x):
        return self.classify(self.features(x))

    def __setstate__(self, state):
        # networks pickled before hidden layers existed
        super().__setstate__(state)
        if "hidden" not in self._modules:
            self._modules["hidden"] = nn.Sequential()
        self.__dict__.setdefault("n_features", self.head.in_features)


def _linear64(x, linear):
    bias = None if linear.bias is None else linear.bias.double()
    return F.linear(x, linear.weight.double(), bias)


def hidden_sizes(head_hidden):
    """``head_hidden`` parameter (None, an int or a sequence of ints) -> tuple of widths."""
    if head_hidden is None:
        return ()
    sizes = [head_hidden] if np.ndim(head_hidden) == 0 else list(np.asarray(head_hidden, dtype=object).ravel())
    if not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ValueError(
            f"head_hidden must be None, a positive int or a sequence of positive ints (the widths of "
            f"hidden layers in the new head, e.g. (1024,)); got {head_hidden!r}."
        )
    return tuple(int(s) for s in sizes)
