"""Test-time augmentation: a few-image classifier predicts on each image and warped views of it.

Fine-tuned on few images, the network's answer for one test image depends on details the
training images never pinned down: the same image shifted or zoomed a little, as augmentation
showed the network in training, can get another answer. Averaging the class probabilities over
the image and ``k`` views of it, drawn from the training augmentation, estimates what training
optimised (the loss over augmented images) rather than one draw of it. On issue 14's
few-image cells it put every cell at or above the best logistic regression: 16 of 16 at 32 px
and 18 of 18 at 64 px, against 13 and 17 in one pass (``docs/benchmarks.md``, "Test-time
augmentation").

The views are ``k`` affine warps drawn once (seed 0) from the augmentation's distribution and
kept as ``test_time_views_``; every image gets the same ``k`` warps, so an image's prediction
does not depend on the other images of its batch. Predicting costs ``k + 1`` forward passes of
each network.
"""

from __future__ import annotations

import torch
from torch import nn

from ._probe_ensemble import log_mean_probabilities
from .data._augment import RandomAffine, resolve_augment, warp
from .training._freezing import few_images

AUTO_VIEWS = 8  # views beside the image itself, with few images (docs/benchmarks.md)


def draw_views(augment, k):
    """``k`` affine matrices (k, 2, 3) from ``augment`` (a :class:`RandomAffine`), the same for every
    fit: drawn from a generator seeded 0."""
    return augment.draw(k, torch.Generator().manual_seed(0))


class ViewAverage(nn.Module):
    """Per task, the log of the mean over the image and its warped views of ``net``'s softmax:
    logits whose softmax is the mean of the class probabilities."""

    def __init__(self, net, views, splits):
        super().__init__()
        self.net = net
        self.views = views
        self.splits = list(splits)

    def forward(self, x):
        views = self.views.to(x.device, x.dtype)  # one copy per batch, not one per view
        outputs = [self.net(x)] + [self.net(warp(x, theta[None])) for theta in views]
        return log_mean_probabilities(outputs, self.splits)


def resolve_test_time_augment(setting, n_train, batch_size, augment, adapting_or_distilling):
    """``"auto"`` -> ``AUTO_VIEWS`` with few images (fewer than 10 batches) when training augments
    with an affine warp (:class:`~sktransfer.RandomAffine`) and has no adaptation loss or teacher,
    else 0; a number is kept."""
    if not isinstance(setting, str):
        return int(setting)
    on = few_images(n_train, batch_size) and isinstance(augment, RandomAffine) and not adapting_or_distilling
    return AUTO_VIEWS if on else 0


class TestTimeAugmentMixin:
    """``test_time_augment`` for :class:`~sktransfer.FineTuneClassifier` (see its docstring)."""

    def _resolve_few_image_settings(self, n_train, start):
        super()._resolve_few_image_settings(n_train, start)
        augment = resolve_augment(self.augment)
        k = resolve_test_time_augment(self.test_time_augment, n_train, self.batch_size, augment,
                                      self.adaptation is not None or self._teacher() is not None)
        self.test_time_augment_ = k
        self.test_time_views_ = (draw_views(augment, k) if k else torch.zeros(0, 2, 3)).numpy()

    def _check_test_time_augment(self):
        """Called by ``fit`` and ``partial_fit`` before training."""
        if isinstance(self.test_time_augment, str) or self.test_time_augment == 0:
            return
        if not isinstance(resolve_augment(self.augment), RandomAffine):
            raise ValueError(
                f"test_time_augment={self.test_time_augment} predicts on views drawn from the training "
                f"augmentation, which must be an affine warp: augment='default', 'flip' or a RandomAffine "
                f"(got augment={self.augment!r}, whose views cannot be drawn once for every image). Set "
                "test_time_augment=0, or augment='default'."
            )

    def _prediction_net(self):
        net = super()._prediction_net()
        views = getattr(self, "test_time_views_", None)
        if views is None or len(views) == 0:
            return net
        return ViewAverage(net, torch.as_tensor(views), self._splits())
