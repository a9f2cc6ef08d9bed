"""What surrounds a fine-tuning fit: torch seeded for its duration (:class:`seeded`), and
:func:`fit_scope`: a fit that continues a network checks the parameters it was built with, and
one that builds a new network and fails leaves the estimator unfitted."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ._digest import setting_digest
from .data._preprocessing import Preprocessing
from .training._divergence import TrainingDiverged, finite_weights


class seeded:
    """Seed torch for the duration of a fit, leaving the global RNG state as it was."""

    def __init__(self, seed, device):
        self.seed = seed
        self.devices = [device.index or 0] if device.type == "cuda" else []

    def __enter__(self):
        self.fork = torch.random.fork_rng(devices=self.devices)
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self.fork.__exit__(*exc)


# the parameters that shape the network when it is built: a fit that continues it cannot apply them
STRUCTURAL = ("backbone", "weights", "layer", "image_size", "pooling", "head_hidden", "dropout", "preprocessing",
              "freeze_depth")


def _structure(estimator):
    """The :data:`STRUCTURAL` parameters as plain values, digested. Networks, estimators and paths
    given as parameters are not compared (their repr is not stable through pickling and saving)."""
    return {name: setting_digest(repr(value)) for name in STRUCTURAL
            if (value := _plain(getattr(estimator, name))) is not _UNCOMPARED}


_UNCOMPARED = object()


def _plain(value):
    """``value`` with numpy scalars as Python numbers and sequences as tuples (as saving leaves
    them); ``_UNCOMPARED`` for anything else but strings, numbers, ``None`` and dicts of those."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        items = tuple(_plain(v) for v in value)
        return _UNCOMPARED if _UNCOMPARED in items else items
    if isinstance(value, Preprocessing):
        value = dict(vars(value))
    if isinstance(value, dict):
        items = tuple(sorted((str(k), _plain(v)) for k, v in value.items()))
        return _UNCOMPARED if any(v is _UNCOMPARED for _, v in items) else items
    return _UNCOMPARED


@contextlib.contextmanager
def fit_scope(estimator, fresh):
    """Around a fit's work. A fit that continues a network (``warm_start``, a later ``partial_fit``)
    first checks that the parameters it was built with are unchanged. A fit that builds a new
    network (``fresh``) records them from the start (its checkpoints carry them) and, if it
    fails, leaves no ``net_``: the estimator stays unfitted (``predict`` raises
    ``NotFittedError``; a ``warm_start`` fit starts afresh). So does a fit that continued a
    network and diverged (:class:`~sktransfer.training._divergence.TrainingDiverged`), unless it
    raised before a step that would have spoilt the weights and they are all finite (BatchNorm
    statistics included): it then keeps the weights of its last finite step."""
    if fresh:
        estimator._built_with = _structure(estimator)
    else:
        built = getattr(estimator, "_built_with", None) or {}  # none: saved before this check existed
        now = _structure(estimator)
        changed = [name for name, digest in built.items() if name in now and now[name] != digest]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} changed since the network was built; a fit that continues it "
                "(warm_start=True, partial_fit) cannot apply that. Set them back, or fit with "
                "warm_start=False to build a new network."
            )
    try:
        yield
    except BaseException as exc:
        if fresh or (isinstance(exc, TrainingDiverged) and not _kept_after(exc, estimator)):
            estimator.__dict__.pop("net_", None)
            estimator.__dict__.pop("_built_with", None)
        raise


def _kept_after(divergence, estimator):
    """Whether a continued fit's network stays after ``divergence``: usable and finite."""
    net = getattr(estimator, "net_", None)
    return divergence.network_usable and net is not None and finite_weights(net)
