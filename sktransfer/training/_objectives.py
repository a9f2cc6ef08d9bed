"""Losses and scores over one or several tasks (columns of y), with missing labels.

Targets arrive encoded as tensors of shape (n,) or (n, k):

* classification: class indices, ``-1`` where a label is missing;
* regression: standardised values, ``NaN`` where a value is missing.

With ``k`` tasks the objective is ``sum_t task_weights[t] * L_t``, where ``L_t``
is task ``t``'s (sample-weighted) mean loss over the samples that have a label
for it. With a source task and a target task, ``task_weights=[1, lam]`` is
``L_S + lam * L_T``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def known_labels(target):
    """Per entry, whether it is a label (``-1`` or NaN is missing), for numpy arrays and tensors."""
    if isinstance(target, torch.Tensor):
        return ~torch.isnan(target) if target.is_floating_point() else target >= 0
    return ~np.isnan(target) if target.dtype.kind == "f" else target >= 0


def labelled_rows(target):
    """Rows with at least one label (``-1`` or NaN is missing), for numpy arrays and tensors."""
    known = known_labels(target)
    return known if known.ndim == 1 else known.any(1)


def _weighted_mean(losses, weight):
    return (losses * weight).sum() / weight.sum().clamp(min=1e-12)


def _class_columns(logits, target, splits):
    """Per task with a label somewhere: ``(t, logits, labels, mask)``, logits and labels of the masked rows."""
    columns = [(logits, target)] if target.ndim == 1 else zip(logits.split(list(splits), dim=1), target.unbind(1))
    for t, (out, col) in enumerate(columns):
        known = col >= 0
        if bool(known.any()):
            yield t, out[known], col[known], known


def _value_columns(pred, target):
    """Per task with a known value: ``(t, predictions, targets, mask)`` of the masked rows, float32
    (float64 if either is)."""
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    pred, target = pred.to(dtype), target.to(dtype)
    if target.ndim == 1:
        pred, target = pred[:, :1], target[:, None]
    for t in range(target.shape[1]):
        known = ~torch.isnan(target[:, t])
        if bool(known.any()):
            yield t, pred[known, t], target[known, t], known


def classification_loss(logits, target, weight, splits, task_weights, label_smoothing=0.0):
    """Weighted cross-entropy summed over tasks (``splits``: classes per task)."""
    total = logits.new_zeros((), dtype=torch.float32)
    for t, out, col, known in _class_columns(logits, target, splits):
        losses = F.cross_entropy(out.float(), col, reduction="none", label_smoothing=label_smoothing)
        total = total + float(task_weights[t]) * _weighted_mean(losses, weight[known])
    return total


def classification_score(logits, target, weight, splits):
    """Weighted accuracy, averaged over tasks, on the labelled samples of each task."""
    scores = [
        _weighted_mean((out.argmax(1) == col).float(), weight[known])
        for _, out, col, known in _class_columns(logits, target, splits)
    ]
    return torch.stack(scores).mean() if scores else torch.tensor(float("nan"))


def regression_loss(pred, target, weight, task_weights, loss="squared_error", delta=1.0):
    """Squared error (halved) or Huber loss, per task over its non-missing values."""
    total = pred.new_zeros((), dtype=torch.float32)
    for t, p, y, known in _value_columns(pred, target):
        if loss == "huber":
            losses = F.huber_loss(p, y, reduction="none", delta=delta)
        else:
            losses = 0.5 * (p - y) ** 2
        total = total + float(task_weights[t]) * _weighted_mean(losses, weight[known])
    return total


def regression_score(pred, target, weight):
    """Weighted R², averaged over tasks, on the known values of each task."""
    scores = []
    for _, p, y, known in _value_columns(pred, target):
        w = weight[known]
        mean = _weighted_mean(y, w)
        residual = (w * (y - p) ** 2).sum()
        spread = (w * (y - mean) ** 2).sum()
        scores.append(1 - residual / spread if spread > 0 else (residual == 0).to(y.dtype))
    return torch.stack(scores).mean() if scores else torch.tensor(float("nan"))
