"""Cross-validation when some rows have no label (unlabelled target images).

:class:`UnlabelledKFold` splits the labelled rows into stratified folds and
puts every unlabelled row in every training fold, so that each candidate of a
``GridSearchCV`` adapts to the same target images and is scored on held-out
labelled rows. With ``unlabelled_in_test=True`` the unlabelled rows are also in
every test fold, for the scorers of :mod:`sktransfer.metrics` that need no
labels (prediction entropy on the target rows).

A row is unlabelled when its label equals ``missing_label`` (``-1``:
scikit-learn's semi-supervised convention), or when ``split`` is given
``sample_domain`` (skada's convention: negative ids are target rows) and its
id is negative.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.model_selection._split import _BaseKFold
from sklearn.utils import indexable
from sklearn.utils.validation import _num_samples

from ._targets import is_missing, target_rows

__all__ = ["UnlabelledKFold", "unlabelled_rows"]


def unlabelled_rows(y, missing_label=-1, sample_domain=None):
    """Boolean mask of the rows without a label (see the module docstring)."""
    y = np.asarray(y)
    mask = np.zeros(len(y), dtype=bool)
    if missing_label is not None:
        equal = is_missing(y, missing_label)
        mask |= equal if equal.ndim == 1 else equal.all(axis=1)
    if sample_domain is not None:
        mask |= target_rows(sample_domain, len(y))
    return mask


class UnlabelledKFold(_BaseKFold):
    """Stratified K-fold over the labelled rows; unlabelled rows in every training fold.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds of the labelled rows (at least 2).
    shuffle : bool, default=False
        Shuffle the labelled rows of each class before splitting.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffling (only with ``shuffle=True``).
    missing_label : int, float, str or None, default=-1
        The label of unlabelled rows.
    unlabelled_in_test : bool, default=False
        Also put every unlabelled row in every test fold (for scorers that
        use unlabelled rows, such as
        :func:`sktransfer.metrics.prediction_entropy_scorer`).

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.model_selection import UnlabelledKFold
    >>> y = np.array([0, 1, 0, 1, 0, 1, -1, -1])
    >>> folds = list(UnlabelledKFold(n_splits=3).split(np.zeros(8), y))
    >>> [test.tolist() for _, test in folds]
    [[0, 1], [2, 3], [4, 5]]
    >>> all({6, 7} <= set(train.tolist()) for train, _ in folds)
    True
    """

    __metadata_request__split = {"sample_domain": True}

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None, missing_label=-1,
                 unlabelled_in_test=False):
        super().__init__(n_splits=n_splits, shuffle=shuffle, random_state=random_state)
        self.missing_label = missing_label
        self.unlabelled_in_test = unlabelled_in_test

    def split(self, X, y, groups=None, sample_domain=None):
        """Generate ``(train, test)`` indices.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,) or (n_samples, n_tasks)
            Labels; ``missing_label`` marks unlabelled rows (multi-task: a row
            is unlabelled when every task's label is missing).
        groups : ignored
        sample_domain : array-like of shape (n_samples,), default=None
            Domain ids; negative ids are unlabelled target rows.

        Yields
        ------
        train, test : ndarray
        """
        if y is None:
            raise ValueError("UnlabelledKFold.split needs y (the labels, with missing_label on unlabelled rows).")
        X, y = indexable(X, y)
        y = np.asarray(y)
        n = _num_samples(X)
        unlabelled = unlabelled_rows(y, self.missing_label, sample_domain)
        labelled = np.flatnonzero(~unlabelled)
        if len(labelled) < self.n_splits:
            raise ValueError(
                f"UnlabelledKFold(n_splits={self.n_splits}) needs at least {self.n_splits} labelled rows; "
                f"got {len(labelled)} of {n}."
            )
        if not unlabelled.any():
            warnings.warn(
                f"UnlabelledKFold found no unlabelled rows (y == {self.missing_label!r}, or negative "
                "sample_domain, which reaches split only with enable_metadata_routing=True).",
                UserWarning, stacklevel=2,
            )
        # multi-task y: plain K-fold (a task's column may hold missing labels)
        folds = (StratifiedKFold if y.ndim == 1 else KFold)(
            self.n_splits, shuffle=self.shuffle, random_state=self.random_state if self.shuffle else None)
        strata = y[labelled] if y.ndim == 1 else None
        extra = np.flatnonzero(unlabelled)
        for train, test in folds.split(np.zeros(len(labelled)), strata):
            train_idx = np.sort(np.concatenate([labelled[train], extra]))
            test_idx = labelled[test]
            if self.unlabelled_in_test:
                test_idx = np.sort(np.concatenate([test_idx, extra]))
            yield train_idx, test_idx

    def get_n_splits(self, X=None, y=None, groups=None, sample_domain=None):
        """The number of folds, ``n_splits``."""
        return self.n_splits
