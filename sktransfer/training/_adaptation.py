"""Domain adaptation: loss terms that use unlabelled target images, and AdaBN.

Each training step sees a batch of labelled (source) rows and, when the fit
has unlabelled (target) rows, an equal batch of them in the same forward pass
(:class:`~sktransfer.training._trainer.Step` says which rows are which and
carries their pooled features). The methods are loss terms of the training
objective (``term(step) -> scalar``), built like the L2-SP penalty:

* ``"coral"``: Deep CORAL (Sun & Saenko, ECCV-W 2016): the squared Frobenius
  distance between the source and target feature covariances, ``||C_s -
  C_t||_F^2 / (4 d^2)``.
* ``"dann"``: domain-adversarial training (Ganin et al., JMLR 2016): a domain
  classifier on the features behind a gradient-reversal layer whose weight
  follows ``2 / (1 + exp(-10 p)) - 1`` over training progress ``p``.
* ``"pseudo_label"``: self-training (Lee, ICML-W 2013): the model's own
  confident predictions on target rows (max probability >= ``threshold``) as
  labels, with a weight ramped up over training.
* ``"adabn"`` (Li et al., 2018) is not a loss: after training, the backbone's
  BatchNorm statistics are re-estimated on the target images
  (:func:`adapt_batchnorm`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data._batches import batch_indices

ADAPTATIONS = ("adabn", "coral", "dann", "pseudo_label")


def dann_weight(progress):
    """Ganin et al.'s schedule: 0 at the start, approaching 1 at the end of training."""
    return 2.0 / (1.0 + math.exp(-10.0 * float(progress))) - 1.0


def coral_loss(source, target):
    """``||C_s - C_t||_F^2 / (4 d^2)`` for feature matrices ``(n, d)`` (float32, at least 2 rows each)."""
    d = source.shape[1]
    cs = torch.cov(source.float().T)
    ct = torch.cov(target.float().T)
    return (cs - ct).pow(2).sum() / (4.0 * d * d)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


def reverse_gradient(x, weight):
    """Identity forward; the gradient multiplied by ``-weight`` backward."""
    return _GradientReversal.apply(x, weight)


class _Term:
    """A loss term of the adaptation; ``value()`` is its last weighted value, for the history."""

    def __init__(self, weight):
        self.weight = float(weight)
        self.last = 0.0

    def parameters(self):
        return []

    def value(self):
        return self.last

    def _split(self, step):
        if step.domain is None or step.features is None:
            return None
        target = step.domain
        if int(target.sum()) < 2 or int((~target).sum()) < 2:
            return None
        return step.features[~target], step.features[target]

    def _done(self, loss):
        weighted = self.weight * loss
        self.last = float(weighted.detach())
        return weighted


class CoralTerm(_Term):
    """Deep CORAL between the pooled features of the source and target rows of a step."""

    def __call__(self, step):
        parts = self._split(step)
        if parts is None:
            return None
        return self._done(coral_loss(*parts))


class DannTerm(_Term):
    """A domain classifier (Linear -> ReLU -> Linear) behind a gradient-reversal layer."""

    def __init__(self, n_features, weight, device, hidden=256):
        super().__init__(weight)
        self.discriminator = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        ).to(device)

    def parameters(self):
        return list(self.discriminator.parameters())

    def __call__(self, step):
        parts = self._split(step)
        if parts is None:
            return None
        features = reverse_gradient(step.features.float(), dann_weight(step.progress))
        logits = self.discriminator(features).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, step.domain.float())
        return self._done(loss)


class PseudoLabelTerm(_Term):
    """Cross-entropy of the target rows against their own confident predictions."""

    def __init__(self, weight, threshold=0.9):
        super().__init__(weight)
        self.threshold = float(threshold)

    def __call__(self, step):
        if step.domain is None or not bool(step.domain.any()):
            return None
        logits = step.output[step.domain].float()
        with torch.no_grad():
            confidence, labels = torch.softmax(logits, 1).max(1)
            keep = confidence >= self.threshold
        if not bool(keep.any()):
            self.last = 0.0
            return None
        loss = F.cross_entropy(logits[keep], labels[keep], reduction="sum") / len(logits)
        return self._done(loss * min(1.0, 2.0 * float(step.progress)))


def adapt_batchnorm(backbone, data, indices, device, batch_size):
    """AdaBN: every BatchNorm layer of ``backbone`` gets the mean and variance of its
    inputs over the images at ``indices``.

    One pass over the images, the BatchNorm layers normalising with their batch
    statistics (so that each layer sees inputs already normalised for the target
    images); each layer's input sums are accumulated over all images, so its new
    statistics are those of the whole set, whatever the batch sizes.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    indices = np.asarray(indices)
    if not norms or len(indices) == 0:
        return
    if len(indices) == 1:  # a batch of one cannot be normalised; two copies have the same statistics
        indices = np.repeat(indices, 2)
    sums = {}

    def accumulate(module, inputs):
        x = inputs[0].detach().float()
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        total, squares, n = sums.get(module, (0.0, 0.0, 0))
        sums[module] = (total + x.sum(dims), squares + x.pow(2).sum(dims), n + count)

    hooks = [m.register_forward_pre_hook(accumulate) for m in norms]
    modes = [m.training for m in norms]
    backbone.eval()
    for m in norms:
        m.train()
    try:
        with torch.no_grad():
            for batch in batch_indices(len(indices), batch_size, None):
                backbone.forward_features(data.batch(indices[batch]).to(device))
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in zip(norms, modes):
            m.train(mode)
        backbone.eval()
    with torch.no_grad():
        for m in norms:
            total, squares, n = sums[m]
            mean = total / n
            var = (squares / n - mean.pow(2)).clamp(min=0) * (n / max(n - 1, 1))  # unbiased, as BatchNorm keeps
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            m.running_var.copy_(var.to(m.running_var.dtype))
            if m.num_batches_tracked is not None:
                m.num_batches_tracked.add_(1)
