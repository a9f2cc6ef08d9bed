"""The new head solved on the frozen pretrained features before fine-tuning starts.

A randomly initialised head sends random gradients into the pretrained
backbone for the first steps, and with few images there are few steps to
recover from them (LP-FT, Kumar et al., 2022). Instead, the head starts as the
solution of a linear model on the pooled pretrained features of the training
images, standardised:

* classification: multinomial logistic regression with an L2 penalty
  (scikit-learn's objective ``C * sum_i w_i CE_i + ||W||^2 / 2``, ``C=1``),
  minimised by L-BFGS; classes absent from the training rows get no weight and
  the lowest bias of the others (:func:`solve_logistic`);
* regression: ridge regression (``alpha=1``) on the standardised targets.

The standardisation is folded into the head's weight and bias, so the network
computes the same function as ``model.predict(scaler.transform(features))``.

The solved head fits the features as the pretrained network computes them, with
BatchNorm on its running statistics. Training that normalises with batch
statistics instead (``bn_stats_="update"``) computes other features from its
first step: on 1257 digits at 64 px the solved head's loss on training batches
was 7-27 against 2.3 for a head that knows nothing, at every layer. So
``head_init="auto"`` solves the head only when training keeps the features it
was solved on, and otherwise starts from a zero head (:func:`resolve_head_init`):
its first steps train the head alone (a zero head passes no gradient to the
features) and the backbone then follows a head that has learned something, the
head of Big Transfer (Kolesnikov et al., 2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._inference import precompute

HEAD_INITS = ("auto", "solve", "zeros", "random")
C = 1.0
RIDGE_ALPHA = 1.0
#: spreads below this fraction of the features' RMS spread are raised to it (see :func:`standardise`)
SCALE_FLOOR = 0.1


def resolve_head_init(head_init, bn_stats, all_frozen=False):
    """``"auto"`` -> ``"solve"`` when training computes the features the head is solved on (the
    BatchNorm layers keep their pretrained statistics, ``bn_stats="pretrained"``, or the whole
    backbone is frozen), else ``"zeros"``. (A classifier's probe ensemble solves it too.)"""
    if head_init != "auto":
        return head_init
    return "solve" if bn_stats == "pretrained" or all_frozen else "zeros"


def start_head(how, net, data, train_idx, y_enc, w, device, batch_size, solver):
    """Start ``net``'s head as ``how`` (a resolved ``head_init``) says: ``"solve"``
    (:func:`solve_head`), ``"zeros"`` (:func:`zero_head`) or ``"random"`` (as built)."""
    if how == "solve":
        solve_head(net, data, train_idx, y_enc, w, device, batch_size, solver)
    elif how == "zeros":
        zero_head(net.head)


def zero_head(head):
    """Set the last linear layer's weight and bias to zero (the hidden layers keep theirs)."""
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()


def standardise(features):
    """``(Z, mean, scale)`` with ``Z = (features - mean) / scale`` (float64).

    A feature whose spread on the training images is below ``SCALE_FLOOR`` times
    the features' root-mean-square spread is divided by that floor, not by its
    own spread: a unit that is all but dead after its activation (1e-8 on a
    few images) would otherwise be blown up to unit variance, and the head,
    whose weights carry ``1 / scale``, would turn the unit's first real
    activation in training into logits in the thousands (Lite0's last map at
    64 px: 453 of 1280 such units; docs/benchmarks.md).
    """
    x = features.double()
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = scale.clamp(min=max(SCALE_FLOOR * float(scale.square().mean().sqrt()), 1e-12))
    return (x - mean) / scale, mean, scale


def solve_logistic(z, labels, weight, n_classes, c=C, max_iter=200):
    """Weights ``(n_classes, d)`` and bias of an L2-penalised multinomial logistic regression.

    Classes absent from ``labels`` (a first ``partial_fit`` whose rows lack some
    of ``classes``) are left out of the solve and start with no weight and the
    lowest bias of the others: solved with them, their biases went to about -9,
    from which later steps (about 0.002 each) never lifted them.
    """
    present = torch.unique(labels)
    if 0 < len(present) < n_classes:
        coef, bias = solve_logistic(z, torch.searchsorted(present, labels), weight, len(present), c, max_iter)
        full_coef = coef.new_zeros(n_classes, coef.shape[1])
        full_bias = bias.new_full((n_classes,), float(bias.min()))
        full_coef[present], full_bias[present] = coef, bias
        return full_coef, full_bias
    d = z.shape[1]
    coef = torch.zeros(n_classes, d, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    w = weight.double()
    total = w.sum().clamp(min=1e-12)
    optimizer = torch.optim.LBFGS(
        [coef, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        losses = F.cross_entropy(z @ coef.T + bias, labels, reduction="none")
        objective = (w * losses).sum() / total + (coef ** 2).sum() / (2 * c * total)
        objective.backward()
        return objective

    with torch.enable_grad():
        optimizer.step(closure)
    return coef.detach(), bias.detach()


def solve_ridge(z, target, weight, alpha=RIDGE_ALPHA):
    """Weights ``(d,)`` and bias of a weighted ridge regression of one target."""
    w = weight.double()
    mean_z = (w[:, None] * z).sum(0) / w.sum()
    mean_y = (w * target.double()).sum() / w.sum()
    zc, yc = z - mean_z, target.double() - mean_y
    gram = zc.T @ (w[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=torch.float64)
    coef = torch.linalg.solve(gram, zc.T @ (w * yc))
    return coef, mean_y - mean_z @ coef


def set_head(head, coef, bias, mean, scale):
    """Write a linear model on standardised features into ``head`` (an ``nn.Linear``)."""
    weight = coef / scale
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_((bias - weight @ mean).to(head.bias.dtype))


def solve_head(net, data, train_idx, y_enc, w, device, batch_size, solver):
    """Set ``net.head`` to ``solver(Z, y, w) -> (coef, bias)`` solved on the standardised
    frozen features of the images at ``train_idx`` (with ``net.hidden`` layers: on their
    activations, the hidden layers random and fed standardised features)."""
    features = precompute(net.features, net, data, device, batch_size, train_idx)
    if len(net.hidden):
        features = _through_hidden(net.hidden, features)
    z, mean, scale = standardise(features)
    coef, bias = solver(z, y_enc[train_idx], torch.as_tensor(w[train_idx]))
    set_head(net.head, coef, bias, mean, scale)


def _through_hidden(hidden, features):
    """Hidden layers (kept at their random initialisation) fed standardised features: the first
    layer takes the standardisation into its weights; returns their activations (no dropout)."""
    _, mean, scale = standardise(features)
    first = hidden[0]
    mean, scale = mean.to(first.weight.device), scale.to(first.weight.device)
    with torch.no_grad():
        weight = first.weight.double() / scale
        first.bias.copy_((first.bias.double() - weight @ mean).to(first.bias.dtype))
        first.weight.copy_(weight.to(first.weight.dtype))
        was_training = hidden.training
        hidden.eval()
        out = hidden(features.to(first.weight.device, first.weight.dtype)).cpu()
        hidden.train(was_training)
    return out


def solve_logistic_per_task(z, y_enc, w, splits):
    """One logistic regression per task (``splits``: classes per task), rows without a label skipped;
    the tasks' weights and biases stacked as one head."""
    target = torch.as_tensor(y_enc).reshape(len(y_enc), -1)
    coefs, biases = [], []
    for t, n_classes in enumerate(splits):
        known = target[:, t] >= 0
        coef, bias = solve_logistic(z[known], target[known, t], w[known], n_classes)
        coefs.append(coef)
        biases.append(bias)
    return torch.cat(coefs), torch.cat(biases)
