"""Backbone families: how a kind of network is loaded, run to its last feature map and staged.

A family is a :class:`Family` registered under the name stored in
``Backbone.family``. Registering one is all it takes to add a kind of network:
write a module with a ``Family`` subclass, call :func:`register_family` on an
instance, and import that module from ``_loading.py`` (the built-in list).
"""

from __future__ import annotations

import os

_FAMILIES = {}


class Family:
    """How one kind of network is loaded, run and cut into stages.

    Subclasses set ``name`` and override what differs from these defaults.
    """

    name = None

    def claims(self, name):
        """True when this family loads the registry name ``name`` (``load_backbone("...")``)."""
        return False

    def load(self, name, weights):
        """A :class:`~sktransfer.Backbone` for a claimed name; ``weights`` as in ``load_backbone``."""
        raise NotImplementedError

    def forward_features(self, backbone, x):
        """The last feature map before pooling: (N, C, H, W), (N, L, D) tokens or (N, D)."""
        raise NotImplementedError

    def stages(self, backbone):
        """Stages ``[(label, [parameter names])]``, input to output; ``None``: the
        generic split of the module tree (``_backbone.generic_stages``)."""

    def output_module(self, backbone, name):
        """The module ``forward_features`` calls whose output is module ``name``'s: ``name`` itself
        unless the family runs a container's children rather than the container."""
        return name

    def names(self):
        """Registry names to suggest in error messages."""
        return []


def register_family(family):
    """Make ``family`` (a :class:`Family` instance) available under ``family.name``."""
    if not isinstance(family, Family) or not isinstance(family.name, str):
        raise TypeError("register_family needs a Family instance with a name.")
    _FAMILIES[family.name] = family
    return family


def family(name):
    """The registered family called ``name``."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"Unknown backbone family {name!r}; registered: {sorted(_FAMILIES)}.") from None


def families():
    """Registered families, in registration order."""
    return list(_FAMILIES.values())


# ---------------------------------------------------------------- weights args
def is_path(weights):
    """True when ``weights`` names a state-dict file rather than a weights name."""
    return isinstance(weights, os.PathLike) or (
        isinstance(weights, str)
        and (weights.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt")) or os.sep in weights)
    )
