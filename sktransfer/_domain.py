"""Unlabelled rows and domain adaptation, the estimator side (the methods: ``training/_adaptation.py``).

A fine-tuning fit splits its rows into labelled rows (the supervised loss,
the solved head, early stopping) and unlabelled rows: those whose label is
``missing_label``, and, with ``fit(..., sample_domain=...)``, those of a
target domain (skada's convention: negative domain ids). With an
``adaptation`` method the unlabelled rows are the target domain it adapts to;
with a ``teacher`` (``_distillation.py``) they learn from the teacher; without
either they are left out of training.
"""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._docstrings import ADAPTATION_MIN_STEPS, DEFAULT_MIN_STEPS
from ._validation import Number
from .training._adaptation import (
    ADAPTATIONS,
    PREDICTION_METHODS,
    CoralTerm,
    DannTerm,
    InformationMaxTerm,
    PseudoLabelTerm,
    adapt_batchnorm,
    class_prior,
)
from .training._objectives import labelled_rows
from .training._trainer import holdout_split, steps_per_epoch

ADAPTATION_CONSTRAINTS = {
    "adaptation": [StrOptions({*ADAPTATIONS, "auto"}), None],
    "adaptation_weight": [Number(Real, 0, None, closed="left")],
}
# adaptation="auto": the method that measured best across shifts (docs/benchmarks.md); with
# several tasks, which "info_max" does not take, the best of the others
AUTO_ADAPTATION, AUTO_ADAPTATION_MULTI_TASK = "info_max", "coral"
# methods that draw a batch of target rows beside every labelled batch
BATCH_METHODS = ("coral", "dann", "pseudo_label", "info_max")


def with_unlabelled(y_known, unlabelled):
    """Encoded targets of the labelled rows, spread over all rows: ``-1`` (classes) or NaN
    (values) on the unlabelled ones."""
    if unlabelled is None:
        return y_known
    fill = np.nan if y_known.dtype.kind == "f" else -1
    out = np.full((len(unlabelled),) + y_known.shape[1:], fill, dtype=y_known.dtype)
    out[~unlabelled] = y_known
    return out


class AdaptationMixin:
    """Labelled and unlabelled rows of a fit, and the ``adaptation`` parameter."""

    def _adaptation_method(self):
        method = getattr(self, "adaptation", None)
        if isinstance(method, str) and method == "auto":
            return AUTO_ADAPTATION if getattr(self, "n_outputs_", 1) == 1 else AUTO_ADAPTATION_MULTI_TASK
        return method

    def _fine_tune_epochs(self, n_train, adapting):
        """Epochs of fine-tuning on ``n_train`` rows: ``max_epochs``, or more to make at least
        ``min_steps`` optimizer steps (few images make short epochs). ``adapting``: target rows
        train beside each batch, whose terms need the longer ``"auto"`` budget."""
        min_steps = self.min_steps
        if isinstance(min_steps, str):  # "auto"
            min_steps = ADAPTATION_MIN_STEPS if adapting else DEFAULT_MIN_STEPS
        return max(self.max_epochs, -(-min_steps // steps_per_epoch(n_train, self.batch_size)))

    def _fit_rows(self, y_enc, rng, resume=None, labelled_only=False):
        """``(train_idx, valid_idx, target_idx)``: labelled training and validation rows (a
        resumed checkpoint's, or split off for early stopping), and the unlabelled rows."""
        labelled = labelled_rows(y_enc)
        train_idx, target_idx = np.flatnonzero(labelled), np.flatnonzero(~labelled)
        if len(train_idx) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 labelled samples; got {len(train_idx)} "
                f"({len(target_idx)} rows are unlabelled)."
            )
        if resume is not None:  # its rows trained on: with a teacher, the unlabelled ones too
            return resume.train_idx[labelled[resume.train_idx]], resume.valid_idx, target_idx
        if labelled_only or not self.early_stopping:
            return train_idx, None, target_idx
        labels = y_enc[train_idx]
        fit_part, valid_part = holdout_split(len(labels), self._stratify_labels(labels), self.validation_fraction, rng)
        return train_idx[fit_part], train_idx[valid_part], target_idx

    def _target_batches(self, target_idx):
        """The unlabelled rows the trainer draws beside each batch (none without a batch method)."""
        method = self._adaptation_method()
        if method is not None and not len(target_idx):
            warnings.warn(
                f"adaptation={self.adaptation!r} has no unlabelled rows to adapt to: mark them with "
                "missing_label (e.g. missing_label=-1 and y=-1) or pass sample_domain (negative ids). "
                "The model is trained on the labelled rows only.", UserWarning, stacklevel=5,
            )
        if method not in BATCH_METHODS or not len(target_idx):
            return np.zeros(0, dtype=np.int64)
        if method in PREDICTION_METHODS and self.n_outputs_ > 1:
            raise ValueError(f"adaptation={method!r} needs single-task y; use 'coral', 'dann' or 'adabn'.")
        if self.checkpoint_dir is not None:
            raise ValueError(
                f"adaptation={method!r} cannot resume from checkpoint_dir (its schedule and target batches "
                "are not checkpointed); use checkpoint_dir=None, or adaptation='adabn'."
            )
        return target_idx

    def _adaptation_terms(self, y_enc, w=None):
        """Factories of the adaptation's loss terms (see ``training/_adaptation.py``); ``y_enc``:
        the encoded targets of the fit's rows, ``-1`` on the unlabelled ones; ``w`` their weights."""
        method, weight = self._adaptation_method(), getattr(self, "adaptation_weight", 1.0)
        if method == "coral":
            return [lambda net: CoralTerm(weight)]
        if method == "dann":
            return [lambda net: DannTerm(net.n_features, weight, next(net.head.parameters()).device)]
        if method == "pseudo_label":
            return [lambda net: PseudoLabelTerm(weight)]
        if method == "info_max":
            labels = np.asarray(y_enc).reshape(len(y_enc), -1)[:, 0]
            known, k = labels >= 0, len(self.classes_)
            weighted = None if w is None else np.bincount(labels[known], np.asarray(w)[known], minlength=k)
            prior = class_prior(np.bincount(labels[known], minlength=k), weighted)
            return [lambda net: InformationMaxTerm(weight, prior)]
        return []

    def _adapt_statistics(self, data, target_idx, source_idx, device):
        """AdaBN after training: BatchNorm statistics that map the target images onto the source's."""
        if self._adaptation_method() == "adabn" and len(target_idx):
            with torch.no_grad():
                adapt_batchnorm(self.net_.backbone, data, target_idx, device, self.batch_size, source_idx)

    def _embed(self, X):
        """Pooled backbone features of images ``X`` (what the head sees), for ``sktransfer.metrics``."""
        check_is_fitted(self, "net_")
        return self._logits(X, net=_Features(self.net_)).float().cpu().numpy()


class _Features(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x)

