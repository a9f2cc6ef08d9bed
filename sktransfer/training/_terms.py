"""The base of the Trainer's weighted loss terms (adaptation, distillation)."""

from __future__ import annotations


class LossTerm:
    """``weight`` times a loss computed from a step; ``value()`` is the last weighted value (for
    ``history_["penalty"]``) and ``parameters()`` what the term trains besides the network."""

    def __init__(self, weight):
        self.weight = float(weight)
        self.last = 0.0

    def parameters(self):
        return []

    def value(self):
        return self.last

    def _done(self, loss):
        weighted = self.weight * loss
        self.last = float(weighted.detach())
        return weighted
