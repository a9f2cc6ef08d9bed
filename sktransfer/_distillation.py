"""Distillation, the estimator side: the ``teacher`` parameter (the loss: ``training/_distillation.py``).

A fit with a ``teacher`` asks it for class probabilities of every row once, in
batches, before training, and trains on every row: the labelled ones through
the labels and the teacher, the unlabelled ones (``missing_label``, or a
negative ``sample_domain``) through the teacher only. The probabilities live
for the duration of the fit; the fitted student keeps nothing of the teacher
but the ``teacher`` parameter itself (``get_params`` and ``clone`` need it;
``save`` does not store it).
"""

from __future__ import annotations

from contextlib import contextmanager
from numbers import Real

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils import _safe_indexing
from sklearn.utils._param_validation import HasMethods

from ._domain import BATCH_METHODS
from ._validation import Number
from .training._distillation import DistillTerm, soften

DISTILLATION_CONSTRAINTS = {
    "teacher": [HasMethods(["predict_proba"]), None],
    "distill_temperature": [Number(Real, 0, None, closed="neither")],
    "distill_weight": [Number(Real, 0, 1, closed="both")],
}
# rows per predict_proba call of the teacher
TEACHER_BATCH = 512


def teacher_probabilities(teacher, X, n_rows, batch=TEACHER_BATCH):
    """``teacher.predict_proba`` of every row of ``X``, ``batch`` rows a call, as float64 ``(n, k)``
    (a ``FineTuneClassifier`` teaches with its fine-tuned network alone, in one pass: no probe, no
    test-time views; see ``_probe_ensemble.py``)."""
    classes = teacher_classes(teacher)
    predict_proba = getattr(teacher, "_teaching_proba", teacher.predict_proba)
    parts = []
    for start in range(0, n_rows, batch):
        rows = _safe_indexing(X, slice(start, min(start + batch, n_rows)))
        try:
            parts.append(np.asarray(predict_proba(rows), dtype=np.float64))
        except NotFittedError as exc:
            raise ValueError(f"teacher={type(teacher).__name__} is not fitted: fit it first ({exc}).") from exc
    proba = np.concatenate(parts) if parts else np.zeros((0, len(classes)))
    valid = np.all(np.isfinite(proba)) and np.all(proba >= 0) and np.all(proba.sum(axis=1) > 0)
    if proba.shape != (n_rows, len(classes)) or not valid:
        raise ValueError(
            f"teacher.predict_proba returned an array of shape {proba.shape} for {n_rows} rows and "
            f"{len(classes)} classes; expected that shape, with finite non-negative probabilities and no "
            "row of zeros."
        )
    return proba / proba.sum(axis=1, keepdims=True)


def teacher_classes(teacher):
    """The fitted teacher's ``classes_`` (one array), or a clear error."""
    classes = getattr(teacher, "classes_", None)
    if classes is None:
        raise ValueError(
            f"teacher={type(teacher).__name__} is not fitted (it has no classes_): pass a fitted classifier. "
            "clone and GridSearchCV keep the same fitted teacher; a teacher given in a parameter grid is "
            "cloned (unfitted) by GridSearchCV: wrap it in sklearn.frozen.FrozenEstimator."
        )
    if isinstance(classes, list) or np.ndim(classes) != 1:
        raise ValueError("teacher must be a single-task classifier (classes_ one array of labels).")
    return np.asarray(classes)


class DistillationMixin:
    """Rows, loss term and task weight of a fit with a ``teacher`` (none without one)."""

    _unsaved_params = ("teacher",)  # save() leaves the teacher out (a warning says so)

    def _teacher(self):
        """The teacher, or None (also with ``distill_weight=0``: it would teach nothing)."""
        teacher = getattr(self, "teacher", None)
        return None if teacher is None or float(self.distill_weight) == 0 else teacher

    def _distilling(self):
        return self._teacher() is not None and getattr(self, "_teacher_proba", None) is not None

    @contextmanager
    def _teaching(self, X, n_rows):
        """Within: ``_teacher_proba``, the teacher's probabilities of the fit's rows (or None);
        the targets must be learned (the classes are checked against the teacher's)."""
        teacher = self._teacher()
        if teacher is not None:
            self._check_teacher(self._classes_list())
        self._teacher_proba = None if teacher is None else teacher_probabilities(teacher, X, n_rows)
        try:
            yield self._teacher_proba
        finally:
            self._teacher_proba = None

    def _check_teacher(self, classes_per_task):
        """``classes_per_task`` (one array per task), once checked: the teacher knows the same classes,
        in the same order. Checked before the estimator learns them: a refused teacher changes nothing."""
        teacher = self._teacher()
        if teacher is None:
            return classes_per_task
        if len(classes_per_task) != 1:
            raise ValueError("teacher needs single-task y (one column of labels).")
        ours, theirs = np.asarray(classes_per_task[0]), teacher_classes(teacher)
        if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
            raise ValueError(
                f"teacher={type(teacher).__name__} predicts classes {theirs.tolist()} but the labelled rows "
                f"have classes {ours.tolist()}: the teacher and the student need the same classes_ in the "
                "same order (fit the teacher on the same label set)."
            )
        if self._adaptation_method() in BATCH_METHODS:
            raise ValueError(
                f"teacher cannot be combined with adaptation={self.adaptation!r}: both train on the unlabelled "
                "rows. Use one of them (adaptation='adabn' combines)."
            )
        return classes_per_task

    def _distill_rows(self, train_idx, target_idx):
        """The rows trained on: with a teacher, the unlabelled rows too (they learn from it alone)."""
        return train_idx if self._teacher() is None else np.union1d(train_idx, target_idx)

    def _distill_terms(self, w, device):
        """The KD term's factory, or none."""
        if not self._distilling():
            return []
        soft = soften(self._teacher_proba, self.distill_temperature).to(device)
        weight = torch.as_tensor(w, dtype=torch.float32, device=device)
        return [lambda net: DistillTerm(soft, weight, self.distill_temperature, self.distill_weight)]

    def __sklearn_clone__(self):
        """A clone shares the fitted teacher: it is an input of the fit, and cloning it would unfit it."""
        teacher = getattr(self, "teacher", None)  # whatever distill_weight is: a grid may change it
        if teacher is None:
            return super().__sklearn_clone__()
        shell = object.__new__(type(self))  # a shallow stand-in, so that self is never modified
        shell.__dict__.update(self.__dict__)
        shell.teacher = None
        new = super(DistillationMixin, shell).__sklearn_clone__()
        new.teacher = teacher
        return new

    def _task_loss_weight(self):
        return 1.0 - float(self.distill_weight) if self._distilling() else 1.0

    def set_params(self, **params):
        nested = sorted(k for k in params if k.startswith("teacher__"))
        if nested:
            raise ValueError(
                f"Cannot set {nested}: the teacher is a fitted model that clones share, and it is never "
                "refitted by the student. Fit the teacher you want and pass it as teacher=."
            )
        return super().set_params(**params)
