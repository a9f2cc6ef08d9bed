"""Scorers for model selection when the target images have no labels.

Both are callables ``scorer(estimator, X, y)`` usable as ``GridSearchCV(scoring=...)``
and ``cross_val_score(scoring=...)``. Rows whose label is the estimator's
``missing_label`` (``-1`` by default in :class:`~sktransfer.model_selection.UnlabelledKFold`)
are the unlabelled target rows; the others are labelled source rows. Use
``UnlabelledKFold(unlabelled_in_test=True)`` so that each test fold holds
target rows.

* :func:`prediction_entropy_scorer`: minus the mean entropy of the predicted
  class probabilities on the target rows (Morerio, Cavazza & Murino, "Minimal-
  entropy correlation alignment for unsupervised deep domain adaptation",
  ICLR 2018): confident target predictions score higher.
* :func:`importance_weighted_scorer`: the accuracy on the labelled source rows,
  each weighted by an estimate of ``p_target(x) / p_source(x)`` from a
  logistic-regression domain classifier on the estimator's features
  (importance-weighted cross-validation, Sugiyama, Krauledat & Müller, JMLR
  2007): source rows that look like target rows count more.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .model_selection import unlabelled_rows

__all__ = ["importance_weighted_scorer", "prediction_entropy_scorer"]

_EPS = 1e-12


def _target_rows(estimator, y, sample_domain):
    missing = getattr(estimator, "missing_label", None)
    if y is None:
        return np.ones(0, dtype=bool) if sample_domain is None else np.asarray(sample_domain) < 0
    return unlabelled_rows(y, -1 if missing is None else missing, sample_domain)


def prediction_entropy_scorer(estimator, X, y=None, sample_domain=None):
    """Minus the mean entropy (nats) of ``estimator.predict_proba`` on the target rows.

    Parameters
    ----------
    estimator : fitted classifier with ``predict_proba``
    X : array-like of images
    y : array-like, default=None
        Labels; rows equal to the estimator's ``missing_label`` (``-1`` when it
        has none) are the target rows. Without ``y`` (or without unlabelled
        rows), every row is scored.
    sample_domain : array-like, default=None
        Domain ids; negative ids are target rows.

    Returns
    -------
    score : float
        ``-mean_i sum_k p_ik log p_ik``, at most 0; greater is better.

    Notes
    -----
    Confident predictions can be wrong: compare settings of one method with
    it, not methods. ``adaptation="info_max"`` (and ``"auto"``) lowers this
    entropy by design, so this scorer favours it whatever its accuracy; use
    :func:`importance_weighted_scorer` to compare it with the others.

    Examples
    --------
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sktransfer.metrics import prediction_entropy_scorer
    >>> from sktransfer.model_selection import UnlabelledKFold
    >>> search = GridSearchCV(
    ...     FineTuneClassifier(missing_label=-1, adaptation="coral"), {"reg_lambda": [0.0, 0.1]},
    ...     scoring=prediction_entropy_scorer, cv=UnlabelledKFold(3, unlabelled_in_test=True),
    ... )  # doctest: +SKIP
    """
    target = _target_rows(estimator, y, sample_domain)
    if target.any():
        X = _rows(X, target)
    proba = estimator.predict_proba(X)
    if isinstance(proba, list):
        raise TypeError("prediction_entropy_scorer needs a single-task classifier.")
    proba = np.clip(proba, _EPS, 1.0)
    return float(-np.mean(-(proba * np.log(proba)).sum(axis=1)))


def importance_weighted_scorer(estimator, X, y, sample_domain=None):
    """Accuracy on the labelled rows, weighted by estimated ``p_target(x) / p_source(x)``.

    The density ratio comes from a logistic regression that tells target rows
    from labelled rows on the estimator's features (the pooled backbone
    features of a fine-tuned network, the output of a pipeline's transformers,
    else the flattened images): ``w = p(target | x) / p(source | x)``, the
    probabilities predicted out of fold (up to 5 folds) and clipped to
    [0.01, 0.99], normalised to mean 1 over the labelled rows. Needs
    labelled and target rows in the scored fold.

    Parameters
    ----------
    estimator : fitted classifier
    X : array-like of images
    y : array-like
        Labels; the estimator's ``missing_label`` (``-1`` when it has none)
        marks target rows.
    sample_domain : array-like, default=None
        Domain ids; negative ids are target rows.

    Returns
    -------
    score : float
        The weighted accuracy, in [0, 1].

    Examples
    --------
    >>> from sktransfer.metrics import importance_weighted_scorer
    >>> from sktransfer.model_selection import UnlabelledKFold
    >>> # GridSearchCV(..., scoring=importance_weighted_scorer,
    >>> #              cv=UnlabelledKFold(3, unlabelled_in_test=True))
    """
    y = np.asarray(y)
    target = _target_rows(estimator, y, sample_domain)
    source = ~target
    if not target.any() or not source.any():
        raise ValueError(
            "importance_weighted_scorer needs labelled and unlabelled (target) rows in the scored fold; "
            "use cv=UnlabelledKFold(..., unlabelled_in_test=True)."
        )
    features = _features(estimator, X)
    # out-of-fold probabilities: a classifier scored on the rows it was fitted on separates the domains
    # of high-dimensional features perfectly, and every weight would be clipped
    domain = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    folds = max(2, min(5, int(source.sum()), int(target.sum())))
    p_target = cross_val_predict(domain, features, target.astype(int), cv=folds, method="predict_proba")[:, 1]
    p_target = np.clip(p_target[source], 0.01, 0.99)
    ratio = p_target / (1 - p_target)
    weights = ratio / ratio.mean()
    correct = np.asarray(estimator.predict(_rows(X, source))) == y[source]
    return float(np.average(correct, weights=weights))


def _rows(X, mask):
    if hasattr(X, "iloc"):
        return X.iloc[np.flatnonzero(mask)]
    if isinstance(X, list):
        return [x for x, keep in zip(X, mask) if keep]
    return np.asarray(X)[mask]


def _features(estimator, X):
    if hasattr(estimator, "_embed"):  # sktransfer's fine-tuned estimators: pooled backbone features
        return np.asarray(estimator._embed(X))
    if isinstance(estimator, Pipeline) and len(estimator) > 1:
        return np.asarray(estimator[:-1].transform(X))
    return np.asarray(X, dtype=float).reshape(len(X), -1)
