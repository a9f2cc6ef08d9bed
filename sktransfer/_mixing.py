"""``mixup`` for :class:`~sktransfer.FineTuneClassifier`: the fitted ``mixup_`` and the checks.

The mixing itself is in ``training/_mixup.py``; the Trainer reads ``mixup_``
through the fit's ``TrainSettings``. A regressor has no ``mixup_`` and does not mix.
"""

from __future__ import annotations

from ._domain import BATCH_METHODS
from .training._mixup import check_mixup, resolve_mixup


class MixupMixin:
    """``mixup`` for the classifier (see its docstring)."""

    def _resolve_few_image_settings(self, n_train, start):
        super()._resolve_few_image_settings(n_train, start)
        self.mixup_ = resolve_mixup(self.mixup, n_train, self.batch_size, self._shallow_network(),
                                    self.adaptation is not None or self._teacher() is not None)

    def _check_mixup(self):
        """Called by ``fit`` and ``partial_fit`` before training."""
        check_mixup(self.mixup, self._adaptation_method() in BATCH_METHODS, self._teacher() is not None)
