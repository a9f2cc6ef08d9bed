"""Targets of the fine-tuning estimators: checks of ``y`` and ``task_weights``, and class labels
(one column per task, missing labels allowed) encoded as integers."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import DataConversionWarning
from sklearn.metrics import accuracy_score
from sklearn.utils import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets


def check_y(y, n_samples, estimator_name, target_noun):
    """``y`` as an array of shape (n,) or (n, k); a column vector becomes 1-D with a warning."""
    if y is None:
        raise ValueError(
            f"{estimator_name} requires y to be passed, but the target y is None; pass the {target_noun}."
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected; use y.ravel().",
            DataConversionWarning, stacklevel=5,
        )
        y = y.ravel()
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
        raise ValueError(f"y must be of shape (n_samples,) or (n_samples, n_tasks), got shape {y.shape}.")
    if len(y) != n_samples:
        raise ValueError(
            f"X and y have inconsistent numbers of samples: {n_samples} images and {len(y)} {target_noun}."
        )
    return y


def task_weight_array(task_weights, n_tasks):
    """``task_weights`` as a float array of length ``n_tasks`` (all ones by default)."""
    if task_weights is None:
        return np.ones(n_tasks)
    weights = np.asarray(task_weights, dtype=float) if not isinstance(task_weights, str) else None
    if weights is None or weights.shape != (n_tasks,) or not np.all(np.isfinite(weights)) \
            or np.any(weights < 0) or not np.any(weights > 0):
        raise ValueError(
            f"task_weights must be None or {n_tasks} non-negative numbers, not all zero (one per "
            f"column of y), got {task_weights!r}."
        )
    return weights


def missing_mask(column, missing_label):
    """Entries of one task column that hold no label (``missing_label``; else, or when it is NaN,
    None or NaN)."""
    if missing_label is not None and not _is_nan(missing_label):
        return is_missing(column, missing_label)
    if column.dtype.kind == "f":
        return np.isnan(column)
    if column.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and v != v) for v in column], dtype=bool)
    return np.zeros(len(column), dtype=bool)


def _is_nan(value):
    return isinstance(value, (float, np.floating)) and value != value  # float("nan"), np.nan, np.float32("nan")


def is_missing(y, missing_label):
    """``y == missing_label`` element-wise, where a NaN ``missing_label`` matches NaN entries."""
    y = np.asarray(y)
    if not _is_nan(missing_label):
        return np.asarray(y == missing_label, dtype=bool)
    if y.dtype.kind == "f":
        return np.isnan(y)
    return np.vectorize(_is_nan, otypes=[bool])(y)


def label_columns(y, missing_label):
    """``(labels, missing mask)`` of each task; labels hold the labelled entries only."""
    if y.ndim == 1 and missing_label is None:
        check_classification_targets(y)
        return [(y, np.zeros(len(y), dtype=bool))]
    if y.ndim == 1:  # unlabelled rows (e.g. target images for domain adaptation)
        missing = missing_mask(y, missing_label)
        known = y[~missing]
        if known.dtype == object:
            known = np.asarray(known.tolist())
        check_classification_targets(known)
        return [(known, missing)]
    out = []
    for t in range(y.shape[1]):
        missing = missing_mask(y[:, t], missing_label)
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


def check_class_counts(classes_per_task):
    """Every task needs at least two classes."""
    for t, classes in enumerate(classes_per_task):
        if len(classes) < 2:
            where = "y" if len(classes_per_task) == 1 else f"task {t} (column {t} of y)"
            raise ValueError(
                f"FineTuneClassifier needs at least 2 classes in {where}; got {len(classes)} ({list(classes)!r})."
            )


def encode_labels(y, classes_per_task, missing_label):
    """Integer codes of ``y`` (``-1``: missing), shaped like ``y``."""
    columns = label_columns(y, missing_label)
    if len(columns) != len(classes_per_task):
        raise ValueError(
            f"y has {len(columns)} task columns; the estimator was fitted with {len(classes_per_task)}."
        )
    encoded = np.full((len(y), len(columns)), -1, dtype=np.int64)
    for t, ((known, missing), classes) in enumerate(zip(columns, classes_per_task)):
        unknown = np.setdiff1d(np.unique(known), classes)
        if len(unknown):
            raise ValueError(
                f"y holds labels {unknown.tolist()} not seen in the first fit; known classes: {classes.tolist()}."
            )
        encoded[~missing, t] = np.searchsorted(classes, known)
    return encoded[:, 0] if y.ndim == 1 else encoded


def _per_task(classes, multi_task):
    return [np.unique(c) for c in classes] if multi_task else [np.unique(np.asarray(classes))]


def partial_fit_classes(classes, y):
    """The ``classes`` argument of a first ``partial_fit`` call, one sorted array per task."""
    if classes is None:
        raise ValueError("classes must be passed on the first call to partial_fit.")
    per_task = _per_task(classes, y.ndim == 2)
    if y.ndim == 2 and len(per_task) != y.shape[1]:
        raise ValueError(f"classes must hold one array per column of y ({y.shape[1]}), got {len(per_task)}.")
    return per_task


def check_same_classes(classes, fitted):
    """A later ``partial_fit`` call may repeat ``classes``, not change them."""
    if classes is None:
        return
    given = _per_task(classes, len(fitted) > 1)
    if len(given) != len(fitted) or not all(np.array_equal(a, b) for a, b in zip(given, fitted)):
        shown = fitted[0] if len(fitted) == 1 else fitted
        raise ValueError(f"classes={classes!r} differs from the first call's {shown!r}.")


def with_class_weight(w, y, class_weight, n_tasks, missing_label=None):
    """Sample weights ``w`` times the weights of ``class_weight`` (single-task ``y`` only;
    unlabelled rows keep their weight and do not count in ``"balanced"``)."""
    if class_weight is None:
        return w
    if n_tasks > 1:
        raise ValueError(
            "class_weight works with a single task; for several, weight the tasks with "
            "task_weights and the samples with sample_weight."
        )
    known = ~missing_mask(y, missing_label) if missing_label is not None else np.ones(len(y), dtype=bool)
    out = np.array(w, dtype=np.float32)
    out[known] = w[known] * compute_sample_weight(class_weight, y[known])
    return out


def target_rows(sample_domain, n):
    """Mask of the target rows given by ``sample_domain`` (negative ids), or None."""
    if sample_domain is None:
        return None
    domain = np.asarray(sample_domain)
    if domain.shape != (n,) or domain.dtype.kind not in "iu" or np.any(domain == 0):
        raise ValueError(
            f"sample_domain must hold one non-zero integer domain id per row ({n} rows): positive for "
            f"labelled source domains, negative for unlabelled target domains (skada's convention); got "
            f"shape {domain.shape}, dtype {domain.dtype}."
        )
    return domain < 0


def labelled_accuracy(y, y_pred, sample_weight, missing_label):
    """Accuracy of single-task predictions on the rows whose label is not ``missing_label``."""
    y = np.asarray(y)
    known = ~missing_mask(y, missing_label) if missing_label is not None else slice(None)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)[known]
    return float(accuracy_score(y[known], y_pred[known], sample_weight=w))
