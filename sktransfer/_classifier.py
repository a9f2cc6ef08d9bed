"""FineTuneClassifier: a pretrained CNN fine-tuned end to end as a scikit-learn classifier."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.utils._available_if import available_if
from sklearn.utils.validation import check_is_fitted

from ._distillation import DISTILLATION_CONSTRAINTS
from ._docstrings import fill_docstring
from ._domain import ADAPTATION_CONSTRAINTS
from ._finetune import FINETUNE_CONSTRAINTS, BaseFineTune
from ._mixing import MixupMixin
from ._probe_ensemble import ProbeEnsembleMixin
from ._test_time import TestTimeAugmentMixin
from ._targets import (
    check_class_counts,
    check_same_classes,
    encode_labels,
    label_columns,
    labelled_accuracy,
    partial_fit_classes,
    with_class_weight,
)
from ._validation import Number, StrOptions
from .backbones._timm import DEFAULT_BACKBONE
from .training._head_init import solve_logistic_per_task
from .training._objectives import classification_loss, classification_score

CLASSIFIER_CONSTRAINTS = {
    **FINETUNE_CONSTRAINTS,
    "label_smoothing": [Number(Real, 0, 1, closed="left")],
    "class_weight": [dict, StrOptions({"balanced"}), None],
    "missing_label": "no_validation",  # any label value
    **ADAPTATION_CONSTRAINTS,
    **DISTILLATION_CONSTRAINTS,
    "probe_ensemble": [StrOptions({"auto"}), "boolean"],
    "mixup": [StrOptions({"auto"}), Number(Real, 0, None, closed="left")],
    "test_time_augment": [StrOptions({"auto"}), Number(Integral, 0, None, closed="left")],
}


def _single_task(estimator):
    return getattr(estimator, "n_outputs_", 1) == 1


class FineTuneClassifier(ClassifierMixin, TestTimeAugmentMixin, ProbeEnsembleMixin, MixupMixin, BaseFineTune):
    """Fine-tune a pretrained CNN end to end behind the scikit-learn classifier API.

    The network is the pretrained backbone (its own classifier dropped), a
    pooling of its last feature map, dropout, and a new linear head with one
    output per class, trained with weighted cross-entropy. ``y`` of shape
    ``(n_samples, n_tasks)`` trains one head per task on the shared backbone
    (multi-task; see ``task_weights``).

%(transfer_objective)s    Parameters
    ----------
%(shared_parameters)s%(classifier_parameters)s
    Attributes
    ----------
%(classifier_attributes)s%(fitted_attributes)s
    See Also
    --------
    PretrainedFeatureExtractor : frozen embeddings for any sklearn model.
    FineTuneRegressor : the same for continuous targets.
    TrainingHistoryDisplay : plots ``history_``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import FineTuneClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = FineTuneClassifier(image_size=32, max_epochs=1, random_state=0)
    >>> clf.fit(X[:64], y[:64]).predict(X[:3]).shape
    (3,)
    """

    _target_noun = "class labels"

    _parameter_constraints: dict = CLASSIFIER_CONSTRAINTS
    # skada's convention, routed by scikit-learn's metadata routing without a set_fit_request call
    __metadata_request__fit = {"sample_domain": True}

    def __init__(
        self,
        backbone=DEFAULT_BACKBONE,
        weights="DEFAULT",
        freeze_depth=0,
        reg_lambda=0.0,
        regularization="l2sp",
        max_epochs=10,
        batch_size=32,
        lr=2e-3,
        optimizer="adamw",
        lr_schedule="cosine",
        backbone_lr_scale="auto",
        layer_decay=None,
        weight_decay=1e-4,
        dropout=0.2,
        pooling="avg",
        layer="auto",
        head_init="auto",
        head_hidden=None,
        min_steps="auto",
        bn_stats="auto",
        augment="default",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        linear_probe_epochs=0,
        fusion_alpha=1.0,
        task_weights=None,
        image_size=None,
        input_shape=None,
        pixel_range="auto",
        preprocessing=None,
        device="auto",
        num_workers="auto",
        checkpoint_dir=None,
        random_state=None,
        verbose=0,
        warm_start=False,
        label_smoothing=0.0,
        class_weight=None,
        missing_label=None,
        adaptation=None,
        adaptation_weight=1.0,
        teacher=None,
        distill_temperature=4.0,
        distill_weight=0.5,
        probe_ensemble="auto",
        mixup="auto",
        test_time_augment="auto",
    ):
        super().__init__(
            backbone=backbone, weights=weights, freeze_depth=freeze_depth, reg_lambda=reg_lambda,
            regularization=regularization, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
            optimizer=optimizer, lr_schedule=lr_schedule, backbone_lr_scale=backbone_lr_scale,
            layer_decay=layer_decay, weight_decay=weight_decay, dropout=dropout, pooling=pooling,
            layer=layer, head_init=head_init, head_hidden=head_hidden, min_steps=min_steps, bn_stats=bn_stats,
            augment=augment, early_stopping=early_stopping, validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change, linear_probe_epochs=linear_probe_epochs,
            fusion_alpha=fusion_alpha, task_weights=task_weights, image_size=image_size,
            input_shape=input_shape, pixel_range=pixel_range, preprocessing=preprocessing, device=device,
            num_workers=num_workers, checkpoint_dir=checkpoint_dir, random_state=random_state,
            verbose=verbose, warm_start=warm_start,
        )
        self.label_smoothing = label_smoothing
        self.class_weight = class_weight
        self.missing_label = missing_label
        self.adaptation = adaptation
        self.adaptation_weight = adaptation_weight
        self.teacher = teacher
        self.distill_temperature = distill_temperature
        self.distill_weight = distill_weight
        self.probe_ensemble = probe_ensemble
        self.mixup = mixup
        self.test_time_augment = test_time_augment

    # ------------------------------------------------------------ target hooks
    def _set_classes(self, classes_per_task):
        check_class_counts(classes_per_task)
        self.n_outputs_ = n_tasks = len(classes_per_task)
        self.classes_ = classes_per_task[0] if n_tasks == 1 else list(classes_per_task)

    def _learn_targets(self, y):
        classes = [np.unique(known) for known, _ in label_columns(y, self.missing_label)]
        self._set_classes(self._check_teacher(classes))  # the teacher checked before anything is learned
        return self._encode(y)

    def _classes_list(self):
        return [self.classes_] if self.n_outputs_ == 1 else list(self.classes_)

    def _encode(self, y):
        return encode_labels(y, self._classes_list(), self.missing_label)

    def _sample_weights(self, y, sample_weight, n):
        return with_class_weight(super()._sample_weights(y, sample_weight, n), y, self.class_weight, self.n_outputs_,
                                 self.missing_label)

    def _n_head_outputs(self):
        return sum(len(c) for c in self._classes_list())

    def _splits(self):
        return [len(c) for c in self._classes_list()]

    def _loss(self, logits, target, weight):
        return classification_loss(
            logits, target, weight, self._splits(), self._task_weights(self.n_outputs_), self.label_smoothing
        )

    def _score(self, logits, target, weight):
        return classification_score(logits, target, weight, self._splits())

    def _stratify_labels(self, y_enc):
        return y_enc if y_enc.ndim == 1 else None

    def _solved_head(self, z, y_enc, w):
        return solve_logistic_per_task(z, y_enc, w, self._splits())

    # ---------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None, sample_domain=None):
        """Fine-tune on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : images
            Arrays, tensors, 2-D tables, paths or PIL images.
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
            Class labels of any type; one column per task for multi-task
            training (missing labels marked by ``missing_label``).
        sample_weight : array-like of shape (n_samples,), default=None
        sample_domain : array-like of int of shape (n_samples,), default=None
            Domain ids (skada's convention): positive for labelled source
            rows, negative for target rows, whose labels are not used (they
            are unlabelled, the target of ``adaptation``).

        Returns
        -------
        self : FineTuneClassifier
        """
        self._check_probe_ensemble()
        self._check_mixup()
        self._check_test_time_augment()
        return self._fit(X, y, sample_weight, sample_domain)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train one more epoch (the first call needs ``classes``).

        Parameters
        ----------
        X : images
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
        classes : array-like or list of array-like, default=None
            All labels that will ever appear (one array per task for
            multi-task ``y``); required on the first call.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : FineTuneClassifier
        """
        self._check_mixup()
        self._check_test_time_augment()
        if hasattr(self, "net_"):
            check_same_classes(classes, self._classes_list())

        def learn(y):
            per_task = partial_fit_classes(classes, y)
            self._set_classes(per_task)

        return self._partial_fit(X, y, sample_weight, learn)

    # ------------------------------------------------------------- predicting
    def _task_logits(self, X, net=None):
        check_is_fitted(self, "net_")
        return self._logits(X, net).double().split(self._splits(), dim=1)

    def _per_task(self, X, fn, net=None):
        """``fn(logits)`` of each task (of ``net``'s logits, by default the estimator's): one array,
        or a list with several tasks."""
        out = [fn(t, dim=1).numpy() for t in self._task_logits(X, net)]
        return out[0] if self.n_outputs_ == 1 else out

    @available_if(_single_task)
    def decision_function(self, X):
        """Logits of the new head (binary: one column, positive class minus negative); with a
        probe ensemble (``probe_net_``) or test-time views (``test_time_views_``), the log of the
        mean class probabilities.

        Single-task estimators only.

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        logits = self._logits(X).numpy().astype(np.float64)
        if len(self.classes_) == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits), columns ordered as ``classes_``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), or a list of them (one per task)
        """
        return self._per_task(X, torch.softmax)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`, computed stably.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes), or a list of them (one per task)
        """
        return self._per_task(X, torch.log_softmax)

    def predict(self, X):
        """Predicted class labels.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_tasks)
        """
        check_is_fitted(self, "net_")
        labels = [c[t.argmax(1).numpy()] for c, t in zip(self._classes_list(), self._task_logits(X))]
        if self.n_outputs_ == 1:
            return labels[0]
        if len({c.dtype for c in labels}) > 1:
            return np.column_stack([c.astype(object) for c in labels])
        return np.column_stack(labels)

    def score(self, X, y, sample_weight=None):
        """Mean accuracy on the labelled rows (``missing_label`` rows are not
        scored); with several tasks, the mean over tasks of each task's accuracy.

        Parameters
        ----------
        X : images
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        check_is_fitted(self, "net_")
        if _single_task(self):  # labels never seen in fit count as wrong
            return labelled_accuracy(y, self.predict(X), sample_weight, self.missing_label)
        logits = self._logits(X).double()
        y = self._check_y(y, len(logits))
        target = torch.as_tensor(self._encode(y))
        weight = torch.as_tensor(BaseFineTune._sample_weights(self, y, sample_weight, len(y)))
        return float(classification_score(logits, target, weight, self._splits()))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


FineTuneClassifier.__doc__ = fill_docstring(FineTuneClassifier.__doc__)
