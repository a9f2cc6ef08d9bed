"""Plotting a fitted estimator's training history, scikit-learn display style."""

from __future__ import annotations

import numpy as np
from sklearn.base import is_regressor
from sklearn.utils.validation import check_is_fitted


class TrainingHistoryDisplay:
    """Training curves (losses, validation score, learning rate) of a fitted estimator.

    Build it with :meth:`from_estimator`; matplotlib is needed only to plot.

    Parameters
    ----------
    history : list of dict
        ``history_`` of a fitted :class:`FineTuneClassifier` or :class:`FineTuneRegressor`.
    best_epoch : int or None
        Marked on the plot when given.
    score_name : str, default="validation score"
        Label of the score axis (``from_estimator`` says accuracy or R²).

    Attributes
    ----------
    ax_ : ndarray of matplotlib Axes
        Loss, score and learning-rate axes (after :meth:`plot`).
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from sktransfer import TrainingHistoryDisplay
    >>> history = [{"epoch": 0, "train_loss": 1.0, "valid_loss": 1.1, "valid_score": 0.5, "lr": 1e-3},
    ...            {"epoch": 1, "train_loss": 0.5, "valid_loss": 0.7, "valid_score": 0.8, "lr": 5e-4}]
    >>> display = TrainingHistoryDisplay(history, best_epoch=1)
    >>> display.epochs.tolist(), display.valid_score.tolist()
    ([0, 1], [0.5, 0.8])
    """

    def __init__(self, history, best_epoch=None, score_name="validation score"):
        self.history = list(history)
        self.best_epoch = best_epoch
        self.score_name = score_name

    def _column(self, key):
        return np.array([np.nan if h.get(key) is None else h[key] for h in self.history], dtype=float)

    @property
    def epochs(self):
        return np.array([h["epoch"] for h in self.history])

    @property
    def train_loss(self):
        return self._column("train_loss")

    @property
    def valid_loss(self):
        return self._column("valid_loss")

    @property
    def valid_score(self):
        return self._column("valid_score")

    @property
    def lr(self):
        return self._column("lr")

    @classmethod
    def from_estimator(cls, estimator, ax=None, **plot_kwargs):
        """Plot the history of a fitted estimator.

        Parameters
        ----------
        estimator : fitted FineTuneClassifier or FineTuneRegressor
        ax : array of 3 matplotlib Axes, default=None
        **plot_kwargs
            Passed to :meth:`plot`.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        check_is_fitted(estimator, "history_")
        score_name = "validation R²" if is_regressor(estimator) else "validation accuracy"
        return cls(estimator.history_, getattr(estimator, "best_epoch_", None), score_name).plot(ax=ax, **plot_kwargs)

    def plot(self, ax=None, title=None):
        """Draw loss, validation score and learning rate against epochs.

        Returns
        -------
        self : TrainingHistoryDisplay
        """
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
        else:
            fig = ax[0].figure
        epochs = self.epochs + 1
        ax[0].plot(epochs, self.train_loss, "o-", label="train loss")
        if np.isfinite(self.valid_loss).any():
            ax[0].plot(epochs, self.valid_loss, "s-", label="validation loss")
        ax[0].set_xlabel("epoch")
        ax[0].set_ylabel("loss")
        ax[0].legend()
        if np.isfinite(self.valid_score).any():
            ax[1].plot(epochs, self.valid_score, "s-", color="C2")
        ax[1].set_xlabel("epoch")
        ax[1].set_ylabel(self.score_name)
        ax[2].plot(epochs, self.lr, "-", color="C3")
        ax[2].set_xlabel("epoch")
        ax[2].set_ylabel("learning rate (start of epoch)")
        if self.best_epoch is not None:
            for a in ax[:2]:
                a.axvline(self.best_epoch + 1, color="grey", linestyle=":", label="best epoch")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        self.ax_, self.figure_ = np.asarray(ax), fig
        return self
