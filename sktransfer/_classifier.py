"""FineTuneClassifier: a pretrained CNN fine-tuned end to end as a scikit-learn classifier."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.utils import compute_sample_weight
from sklearn.utils._available_if import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._backbones import DEFAULT_BACKBONE
from ._finetune import DEFAULT_MIN_STEPS, SHARED_PARAMETERS, BaseFineTune, check_number
from ._head_init import solve_logistic
from ._tasks import classification_loss, classification_score


def _single_task(estimator):
    return getattr(estimator, "n_outputs_", 1) == 1


class FineTuneClassifier(ClassifierMixin, BaseFineTune):
    """Fine-tune a pretrained CNN end to end behind the scikit-learn classifier API.

    The network is the pretrained backbone (its own classifier dropped), a
    pooling of its last feature map, dropout, and a new linear head with one
    output per class, trained with weighted cross-entropy. ``y`` of shape
    ``(n_samples, n_tasks)`` trains one head per task on the shared backbone
    (multi-task; see ``task_weights``).

    **Transfer objective.** Training minimises, over the network weights θ,
    ``L_T(θ) + reg_lambda / 2 * ||θ_backbone - θ_pretrained||²`` (L2-SP; Li,
    Grandvalet & Davoine, 2018). The joint source/target objective
    ``min L_S(θ) + λ L_T(θ)`` needs the source data; when it is absent, the
    pretrained weights stand for the minimiser of ``L_S`` and a quadratic
    approximation of ``L_S`` around them is exactly this pull toward
    ``θ_pretrained`` (with ``reg_lambda`` playing the part of ``1/λ``: the larger
    it is, the more the source task weighs). ``reg_lambda=0`` is plain
    fine-tuning. ``regularization="l2"`` pulls toward zero instead (classic
    weight decay). The penalty covers the trainable backbone weights only; the
    optimizer applies no weight decay of its own to them, so nothing is
    counted twice. The new head gets the optimizer's ``weight_decay``.

    Parameters
    ----------
%(shared_parameters)s    label_smoothing : float, default=0.0
        Cross-entropy label smoothing.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes (single-task ``y`` only), multiplied into
        ``sample_weight``.
    task_weights : array-like of shape (n_tasks,) or None, default=None
        Multi-task ``y`` only: the loss is ``sum_t task_weights[t] * L_t``,
        ``L_t`` being task ``t``'s mean cross-entropy over the samples labelled
        for it. A sample may lack a label for a task: mark it with
        ``missing_label`` and that task's loss skips it. With a source task and
        a target task, ``task_weights=[1, lam]`` minimises ``L_S + lam * L_T``
        literally. ``None``: all ones.
    missing_label : scalar or None, default=None
        Marks a missing label in multi-task ``y``. ``None``: ``None`` and NaN
        entries are missing (use an object or float array); set e.g. ``-1`` for
        integer labels. Single-task ``y`` cannot have missing labels.
    Attributes
    ----------
    classes_ : ndarray or list of ndarray
        Class labels; one array per task when ``y`` has several columns.
    n_outputs_ : int
        Number of tasks (columns of ``y``).
    net_ : TransferNet
        The trained network (backbone, pooling, dropout, head).
    history_ : list of dict
        Per epoch: ``epoch``, ``phase``, ``train_loss``, ``valid_loss``,
        ``valid_score``, ``lr``, ``seconds``.
    n_epochs_ : int
        Epochs run in total.
    best_epoch_ : int or None
        Epoch (0-based, counted in ``history_``) whose weights were kept by
        early stopping; ``None`` without early stopping.
    n_frozen_stages_ : int
    layer_ : str
        Where the backbone was cut: ``"stageK"``, or ``"embedding"`` for the
        whole backbone (see ``layer``).
    bn_stats_ : {"pretrained", "update"}
        The BatchNorm setting used in training (see ``bn_stats``).
    backbone_lr_scale_ : float
        The backbone learning-rate scale used in training (see ``backbone_lr_scale``).
    pixel_range_ : tuple of float
    n_features_in_ : int
        Only when ``X`` is a 2-D table.

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
        head_init="solve",
        min_steps=DEFAULT_MIN_STEPS,
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
    ):
        super().__init__(
            backbone=backbone, weights=weights, freeze_depth=freeze_depth, reg_lambda=reg_lambda,
            regularization=regularization, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
            optimizer=optimizer, lr_schedule=lr_schedule, backbone_lr_scale=backbone_lr_scale,
            layer_decay=layer_decay, weight_decay=weight_decay, dropout=dropout, pooling=pooling,
            layer=layer, head_init=head_init, min_steps=min_steps, bn_stats=bn_stats,
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

    # ------------------------------------------------------------ target hooks
    def _check_params(self):
        super()._check_params()
        check_number(self.label_smoothing, "label_smoothing", 0, 1, lo_open=False, hi_open=True)

    def _missing(self, column):
        if self.missing_label is not None:
            return np.asarray(column == self.missing_label, dtype=bool)
        if column.dtype.kind == "f":
            return np.isnan(column)
        if column.dtype.kind == "O":
            return np.array([v is None or (isinstance(v, float) and v != v) for v in column], dtype=bool)
        return np.zeros(len(column), dtype=bool)

    def _set_classes(self, classes_per_task, n_tasks):
        for t, classes in enumerate(classes_per_task):
            if len(classes) < 2:
                where = "y" if n_tasks == 1 else f"task {t} (column {t} of y)"
                raise ValueError(
                    f"FineTuneClassifier needs at least 2 classes in {where}; got {len(classes)} "
                    f"({list(classes)!r})."
                )
        self.n_outputs_ = n_tasks
        self.classes_ = classes_per_task[0] if n_tasks == 1 else list(classes_per_task)

    def _columns(self, y):
        """``(labels, missing mask)`` of each task; labels hold the labelled entries only."""
        if y.ndim == 1:
            check_classification_targets(y)
            return [(y, np.zeros(len(y), dtype=bool))]
        out = []
        for t in range(y.shape[1]):
            missing = self._missing(y[:, t])
            known = y[~missing, t]
            if known.dtype == object:  # e.g. ints beside None: let numpy find the type
                known = np.asarray(known.tolist())
            if len(known):
                try:
                    check_classification_targets(known)
                except ValueError as exc:
                    raise ValueError(f"Column {t} of y: {exc}") from None
            out.append((known, missing))
        return out

    def _learn_targets(self, y):
        columns = self._columns(y)
        self._set_classes([np.unique(known) for known, _ in columns], len(columns))
        return self._encode(y)

    def _classes_list(self):
        return [self.classes_] if self.n_outputs_ == 1 else list(self.classes_)

    def _encode(self, y):
        columns = self._columns(y)
        if len(columns) != self.n_outputs_:
            raise ValueError(f"y has {len(columns)} task columns; the estimator was fitted with {self.n_outputs_}.")
        encoded = np.full((len(y), len(columns)), -1, dtype=np.int64)
        for t, ((known, missing), classes) in enumerate(zip(columns, self._classes_list())):
            unknown = np.setdiff1d(np.unique(known), classes)
            if len(unknown):
                raise ValueError(
                    f"y holds labels {unknown.tolist()} not seen in the first fit; "
                    f"known classes: {classes.tolist()}."
                )
            encoded[~missing, t] = np.searchsorted(classes, known)
        return encoded[:, 0] if y.ndim == 1 else encoded

    def _weights(self, y, sample_weight, n):
        w = super()._weights(y, sample_weight, n)
        if self.class_weight is not None:
            if self.n_outputs_ > 1:
                raise ValueError(
                    "class_weight works with a single task; for several, weight the tasks with "
                    "task_weights and the samples with sample_weight."
                )
            w = (w * compute_sample_weight(self.class_weight, y)).astype(np.float32)
        return w

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
        target = torch.as_tensor(y_enc).reshape(len(y_enc), -1)
        coefs, biases = [], []
        for t, n_classes in enumerate(self._splits()):
            known = target[:, t] >= 0
            coef, bias = solve_logistic(z[known], target[known, t], w[known], n_classes)
            coefs.append(coef)
            biases.append(bias)
        return torch.cat(coefs), torch.cat(biases)

    # ---------------------------------------------------------------- fitting
    def fit(self, X, y, sample_weight=None):
        """Fine-tune on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : images
            Arrays, tensors, 2-D tables, paths or PIL images.
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
            Class labels of any type; one column per task for multi-task
            training (missing labels marked by ``missing_label``).
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : FineTuneClassifier
        """
        return self._fit(X, y, sample_weight)

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
        def learn(y):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            per_task = [np.unique(np.asarray(classes))] if y.ndim == 1 else [np.unique(c) for c in classes]
            if y.ndim == 2 and len(per_task) != y.shape[1]:
                raise ValueError(f"classes must hold one array per column of y ({y.shape[1]}), got {len(per_task)}.")
            self._set_classes(per_task, len(per_task))

        if hasattr(self, "net_") and classes is not None:
            given = [np.unique(np.asarray(classes))] if self.n_outputs_ == 1 else [np.unique(c) for c in classes]
            if len(given) != self.n_outputs_ or not all(
                np.array_equal(a, b) for a, b in zip(given, self._classes_list())
            ):
                raise ValueError(f"classes={classes!r} differs from the first call's {self.classes_!r}.")
        return self._partial_fit(X, y, sample_weight, learn)

    # ------------------------------------------------------------- predicting
    def _task_logits(self, X):
        check_is_fitted(self, "net_")
        return self._logits(X).double().split(self._splits(), dim=1)

    def _per_task(self, X, fn):
        """``fn(logits)`` of each task: one array, or a list with several tasks."""
        out = [fn(t, dim=1).numpy() for t in self._task_logits(X)]
        return out[0] if self.n_outputs_ == 1 else out

    @available_if(_single_task)
    def decision_function(self, X):
        """Logits of the new head (binary: one column, positive class minus negative).

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
        """Mean accuracy; with several tasks, the mean over tasks of each task's
        accuracy on the samples labelled for it.

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
        if _single_task(self):
            return super().score(X, y, sample_weight)
        y = self._check_y(y, len(y))
        target = torch.as_tensor(self._encode(y))
        weight = torch.as_tensor(self._weights(y, sample_weight, len(y)))
        return float(classification_score(self._logits(X).double(), target, weight, self._splits()))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


FineTuneClassifier.__doc__ = FineTuneClassifier.__doc__.replace("%(shared_parameters)s", SHARED_PARAMETERS)
