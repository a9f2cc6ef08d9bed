"""Mixup: training on convex combinations of pairs of images and of their losses.

Mixup (Zhang et al., ICLR 2018) trains on ``lam * x_i + (1 - lam) * x_j`` with
the loss ``lam * L(y_i) + (1 - lam) * L(y_j)``, ``lam ~ Beta(alpha, alpha)``
once per batch and ``j`` a shuffle of the batch. Between two training images
the network is asked to move linearly from one answer to the other, so it
cannot become certain far from them. With few images that is what fine-tuning
lacked: 20 faces are fitted by the solved head before the first step, and
plain fine-tuning then moved the features in a direction those images did
not determine, making confident errors on test faces (docs/benchmarks.md,
"Mixup in few-image fits").
"""

from __future__ import annotations

import torch

from ._freezing import few_images
from ._objectives import known_labels

# mixup="auto": the Beta parameter with few images (Zhang et al.'s ImageNet value), and otherwise
AUTO_MIXUP_ALPHA = (0.2, 0.0)


def check_mixup(mixup, batch_adaptation, distilling):
    """A ``ValueError`` for mixup asked for beside an objective that reads each image of a batch as
    it is (``_parameter_constraints`` has already refused what is not 'auto' or a number >= 0)."""
    if isinstance(mixup, str) or mixup == 0 or not (batch_adaptation or distilling):
        return
    what = "an adaptation loss on target batches (their rows share each batch unmixed)" if batch_adaptation \
        else "a teacher (its soft targets belong to the images unmixed)"
    raise ValueError(
        f"mixup={float(mixup)} cannot be combined with {what}. Set mixup='auto' (off there) or mixup=0."
    )


def resolve_mixup(mixup, n_train, batch_size, shallow, adapting_or_distilling):
    """``"auto"`` -> 0.2 with few images (fewer than 10 batches) unless the network trained is
    ``shallow`` (``_freezing.shallow_network``), else 0; a number is kept.

    A shallow network (Lite0 cut after stage 3, as at 32 px) learns at the full rate with few
    images (``resolve_backbone_lr_scale``), and mixup measured worse there on the photograph crops
    (docs/benchmarks.md, "Mixup in few-image fits")."""
    if not isinstance(mixup, str):
        return float(mixup)
    few = few_images(n_train, batch_size) and not shallow
    return AUTO_MIXUP_ALPHA[0 if few and not adapting_or_distilling else 1]


def mix_batch(x, alpha):
    """``(mixed x, (lam, perm))``: the batch mixed with a shuffle of itself.

    ``lam`` and ``perm`` come from torch's global generator (seeded by the fit's
    ``random_state``, as the augmentation is)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(x)).to(x.device)
    return lam * x + (1.0 - lam) * x[perm], (lam, perm)


def mixed_loss(loss, output, target, weight, mix):
    """``lam * loss(y) + (1 - lam) * loss(y[perm])`` for a batch mixed by :func:`mix_batch`;
    each sample keeps its weight with its label. With several tasks, a task whose label is
    missing (-1, or NaN) for either image of a pair counts for neither: half an image is never
    trained as a whole one."""
    lam, perm = mix
    first, second = target, target[perm]
    if target.ndim > 1:
        either = ~(known_labels(first) & known_labels(second))
        unknown = torch.full_like(first, float("nan") if target.is_floating_point() else -1)
        first, second = torch.where(either, unknown, first), torch.where(either, unknown, second)
    return lam * loss(output, first, weight) + (1.0 - lam) * loss(output, second, weight[perm])
