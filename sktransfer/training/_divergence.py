"""Training that diverges, and steps that overflow float16.

The Trainer reads each step's objective before its backward pass. One that is
not finite raises :class:`TrainingDiverged` (a ``ValueError`` naming the fix),
before the step could make every weight NaN; under fp16 autocast (GPUs of
compute capability 7.x) the forward pass overflowed instead, and the step is
skipped and counted (:class:`Overflows`). The weights are checked after each
epoch (:func:`finite_weights`): a finite objective can have infinite gradients.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


class TrainingDiverged(ValueError):
    """A training step's objective, the weights after an epoch or the validation outputs were
    not finite (NaN or inf). ``network_usable``: raised before a step that would have spoilt
    the weights (they are those of the last finite step). A new fit that raises it leaves the
    estimator unfitted, and so does a continued one whose network is not usable
    (:func:`sktransfer._fitting.fit_scope`)."""

    def __init__(self, message, network_usable=False):
        super().__init__(message)
        self.network_usable = network_usable


def finite_weights(module):
    """Whether every floating-point parameter and buffer of ``module`` is finite (one sync)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


# steps in a row whose objective overflowed float16 before a fit gives up: an epoch's, at least this
OVERFLOWS_IN_A_ROW = 10


@dataclass
class Overflows:
    """Steps skipped under fp16 autocast because their objective was not finite: in all, and in
    a row. ``partial_fit`` keeps one from call to call, with its gradient scaler."""

    total: int = 0
    in_a_row: int = 0

    def add(self, n_batches):
        """Count a skipped step; True when the fit should give up: ``n_batches`` (an epoch's) in a
        row, at least :data:`OVERFLOWS_IN_A_ROW`. A step that trains resets ``in_a_row``."""
        self.total += 1
        self.in_a_row += 1
        return self.in_a_row >= max(n_batches, OVERFLOWS_IN_A_ROW)


def divergence(what, lr, optimizer, where, network_usable=False):
    """The :class:`TrainingDiverged` for ``what`` went wrong ``where`` ("in epoch 3"), naming the fix."""
    fix = f"lower lr (now {lr:g})" + (" or use optimizer='adamw'" if optimizer == "sgd" else "")
    return TrainingDiverged(
        f"Training diverged {where}: {what}. The optimizer's steps are too large for this network and "
        f"data: {fix}. Loss terms (reg_lambda, an adaptation, a teacher) weigh in the steps too.",
        network_usable)


def warn_overflowed(skipped, n_steps, lr):
    """One warning for the ``skipped`` of ``n_steps`` steps that fp16 autocast skipped."""
    if skipped:
        warnings.warn(
            f"{skipped} of {n_steps} training steps were skipped: under float16 autocast (GPUs of compute "
            f"capability 7.x, such as V100 and T4) their objective overflowed (was not finite). If this "
            f"recurs, lower lr (now {lr:g}).", RuntimeWarning, stacklevel=5,
        )
