"""What surrounds a fine-tuning fit: torch seeded for its duration (:class:`seeded`), and
:func:`fit_scope`: a fit that continues a network checks the parameters it was built with, and
one that builds a new network and fails leaves the estimator unfitted."""

from __future__ import annotations

import contextlib

import torch

from ._digest import setting_digest


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
    return {name: setting_digest(repr(getattr(estimator, name))) for name in STRUCTURAL}


@contextlib.contextmanager
def fit_scope(estimator, fresh):
    """Around a fit's work. A fit that continues a network (``warm_start``, a later ``partial_fit``)
    first checks that the parameters it was built with are unchanged; a fit that builds a new
    network (``fresh``) and then fails leaves no ``net_``: the estimator stays unfitted
    (``predict`` raises ``NotFittedError``; a ``warm_start`` fit starts afresh)."""
    built = None if fresh else getattr(estimator, "_built_with", None)
    changed = [name for name, digest in (built or {}).items() if _structure(estimator).get(name) != digest]
    if changed:
        raise ValueError(
            f"{', '.join(changed)} changed since the network was built; a fit that continues it (warm_start=True, "
            "partial_fit) cannot apply that. Set them back, or fit with warm_start=False to build a new network."
        )
    try:
        yield
    except BaseException:
        if fresh:
            estimator.__dict__.pop("net_", None)
        raise
    if fresh:
        estimator._built_with = _structure(estimator)
