"""Declarative parameter checks, the scikit-learn way.

Each estimator states its parameters' constraints in one
``_parameter_constraints`` table, built from scikit-learn's constraint objects
(``Interval``, ``StrOptions``, ``"boolean"``, ``callable``...) and the few
below that scikit-learn does not have; ``fit`` checks the table through
scikit-learn's ``_fit_context``. A violation raises scikit-learn's
``InvalidParameterError`` (a ``ValueError`` and a ``TypeError``) naming the
parameter, what it must be, and the value given.

numpy scalars pass wherever Python numbers do (``np.float32(0.1)`` is a Real);
booleans do not pass for numbers (``True`` is an ``int`` to Python, not a
learning rate).
"""

from __future__ import annotations

import re

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, Options, StrOptions

__all__ = ["Interval", "Number", "StrOptions", "Pattern", "PixelRange", "Device"]


class Number(Interval):
    """An :class:`~sklearn.utils._param_validation.Interval` that refuses booleans."""

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


class _Custom(Options):
    """A constraint of our own. scikit-learn's validator accepts only its own
    constraint classes, ``Options`` among them; the subclasses override the test."""

    def __init__(self):
        super().__init__(object, set())


class Pattern(_Custom):
    """A string matching a regular expression; ``description`` is what users read."""

    def __init__(self, regex, description):
        super().__init__()
        self.regex = re.compile(regex)
        self.description = description

    def is_satisfied_by(self, val):
        return isinstance(val, str) and self.regex.fullmatch(val) is not None

    def __str__(self):
        return self.description


class PixelRange(_Custom):
    """A pair ``(lo, hi)`` of numbers with ``lo < hi``."""

    def is_satisfied_by(self, val):
        return (
            isinstance(val, (tuple, list)) and len(val) == 2
            and all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_)) for v in val)
            and float(val[1]) > float(val[0])
        )

    def __str__(self):
        return "a pair (lo, hi) with lo < hi giving the black and white values of float inputs"


class Device(_Custom):
    """A torch device: a string ``torch.device`` accepts (``"cpu"``, ``"cuda"``, ``"cuda:N"``...),
    a ``torch.device``, or ``None`` (as ``"auto"``)."""

    def is_satisfied_by(self, val):
        if val is None or isinstance(val, torch.device):
            return True
        try:
            torch.device(val)
        except (RuntimeError, TypeError, ValueError):
            return False
        return isinstance(val, str)

    def __str__(self):
        return "'cpu', 'cuda', 'cuda:N', a torch.device or None"
