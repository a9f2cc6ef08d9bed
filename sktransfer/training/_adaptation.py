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
* ``"info_max"``: information maximisation on the target rows (Krause et al.,
  NeurIPS 2010; the IM loss of SHOT, Liang et al., ICML 2020): the mean
  entropy of each target prediction (confident predictions) plus the
  divergence of their mean from a class prior (:func:`class_prior`: uniform,
  as in SHOT, unless the labelled rows are clearly imbalanced).
* ``"adabn"`` (Li et al., 2018) is not a loss: after training, the backbone's
  BatchNorm statistics are re-estimated on the target images
  (:func:`adapt_batchnorm`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from torch import nn

from ..data._batches import batch_indices
from ._terms import LossTerm

ADAPTATIONS = ("adabn", "coral", "dann", "pseudo_label", "info_max")
# methods that learn from the class predictions of target rows: single-task classifiers only
PREDICTION_METHODS = ("pseudo_label", "info_max")


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


class _Term(LossTerm):
    """A loss term of the adaptation: source and target rows of a step."""

    def _split(self, step):
        if step.domain is None or step.features is None:
            return None
        target = step.domain
        if int(target.sum()) < 2 or int((~target).sum()) < 2:
            return None
        return step.features[~target], step.features[target]


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


def class_prior(counts, weighted=None, alpha=0.05):
    """The class frequencies the target predictions of ``"info_max"`` should average to.

    Uniform (``None``, SHOT's choice) unless a chi-square test rejects balanced classes
    at level ``alpha`` for the labelled rows' class ``counts``: then their frequencies,
    weighted by the per-class sums of sample weights ``weighted`` when given (so that
    ``class_weight="balanced"`` asks for balanced predictions, as the task loss does);
    a class never seen counts as half a row. A labelled sample drawn from balanced
    classes has uneven counts by chance (300 digits: 19 to 40 of a class), and
    matching those cost 0.02 target accuracy on the noise shift of
    ``benchmarks/domain_adaptation.py``; a real imbalance (5:1) made uniform cost 0.09
    (both measured before target rows went unaugmented and got 300 steps).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) < 2 or counts.sum() == 0 or chisquare(counts).pvalue >= alpha:
        return None
    if weighted is not None and np.sum(weighted) > 0:  # the weighted shares, on the scale of the counts
        counts = np.asarray(weighted, dtype=np.float64) / np.sum(weighted) * counts.sum()
    counts = np.maximum(counts, 0.5)
    return counts / counts.sum()


class InformationMaxTerm(_Term):
    """``mean_i H(p_i) + KL(mean_i p_i || prior)`` over the target rows' predicted class
    probabilities ``p_i``: 0 for confident predictions whose mean is the ``prior`` (see
    :func:`class_prior`; ``None``: uniform, as in SHOT)."""

    def __init__(self, weight, prior=None):
        super().__init__(weight)
        if prior is not None:  # a share of 0 would make the divergence infinite
            prior = torch.as_tensor(prior, dtype=torch.float32).clamp_min(1e-6)
            prior = torch.log(prior / prior.sum())
        self.log_prior = prior

    def __call__(self, step):
        # one target row would only be pulled towards the prior's largest class
        if step.domain is None or int(step.domain.sum()) < 2:
            return None
        log_p = torch.log_softmax(step.output[step.domain].float(), 1)
        p = log_p.exp()
        conditional = -(p * log_p).sum(1).mean()
        mean = p.mean(0)
        log_prior = -math.log(mean.numel()) if self.log_prior is None else self.log_prior.to(mean.device)
        to_prior = (mean * (torch.log(mean.clamp_min(1e-12)) - log_prior)).sum()
        return self._done(conditional + to_prior)


def adapt_batchnorm(backbone, data, indices, device, batch_size, source_indices=None):
    """AdaBN: map the target images' BatchNorm inputs onto the source's.

    Each BatchNorm layer normalises with running statistics ``(m, v)``. For
    inputs of mean ``mu_t`` and std ``s_t`` on the target images (``indices``)
    and ``mu_s``, ``s_s`` on the source images (``source_indices``; without
    them, the layer's own statistics: a pretrained network's source), the layer
    gets the statistics that standardise target inputs as the source ones were,
    ``m' = mu_t - (mu_s - m) s_t / s_s`` and ``sqrt(v' + eps) = s_t sqrt(v + eps) / s_s``
    (classic AdaBN, ``m' = mu_t``, ``v' = s_t^2``, when ``(m, v)`` are the source's).
    The target pass goes through the layers in order, each already adapted with
    its batch's statistics, so deeper layers see adapted inputs; the statistics
    set at the end are those of all the target images, whatever the batch sizes.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    indices = np.asarray(indices)
    if not norms or len(indices) == 0:
        return
    if len(indices) == 1:  # a batch of one has no spread; two copies have the same statistics
        indices = np.repeat(indices, 2)
    saved = {m: (m.running_mean.double().clone(), (m.running_var.double() + m.eps).sqrt()) for m in norms}
    source = _input_moments(backbone, norms, data, source_indices, device, batch_size) if source_indices is not None \
        and len(source_indices) else {m: (mean, std) for m, (mean, std) in saved.items()}

    def adapted(module, mean_t, std_t):
        mean, std = saved[module]
        mean_s, std_s = source[module]
        return mean_t - (mean_s - mean) * std_t / std_s, std_t * std / std_s

    def set_stats(module, mean_t, std_t):
        new_mean, new_std = adapted(module, mean_t, std_t)
        module.running_mean.copy_(new_mean.to(module.running_mean.dtype))
        module.running_var.copy_((new_std.pow(2) - module.eps).clamp(min=0).to(module.running_var.dtype))

    target = _input_moments(backbone, norms, data, indices, device, batch_size, on_batch=set_stats)
    with torch.no_grad():
        for m in norms:
            set_stats(m, *target[m])
    backbone.eval()


def _input_moments(backbone, norms, data, indices, device, batch_size, on_batch=None):
    """Per-channel mean and std (``sqrt(var + eps)``) of each BatchNorm layer's inputs over the
    images at ``indices``, the network in eval mode; ``on_batch(module, mean, std)`` is called
    with each batch's moments before the layer runs on it."""
    sums = {}

    def accumulate(module, inputs):
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        total, squares, n = sums.get(module, (0.0, 0.0, 0))
        batch_sum, batch_squares = x.sum(dims), x.pow(2).sum(dims)
        sums[module] = (total + batch_sum, squares + batch_squares, n + count)
        if on_batch is not None:
            on_batch(module, *_moments(module, batch_sum, batch_squares, count))

    hooks = [m.register_forward_pre_hook(accumulate) for m in norms]
    backbone.eval()
    try:
        with torch.no_grad():
            for batch in batch_indices(len(indices), batch_size, None):
                backbone.forward_features(data.batch(np.asarray(indices)[batch]).to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return {m: _moments(m, *sums[m]) for m in norms}


def _moments(module, total, squares, n):
    mean = total / n
    var = (squares / n - mean.pow(2)).clamp(min=0) * (n / max(n - 1, 1))  # unbiased, as BatchNorm keeps
    return mean, (var + module.eps).sqrt()
