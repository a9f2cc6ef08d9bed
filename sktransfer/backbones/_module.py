"""The ``"module"`` family: a torch ``nn.Module`` of the user's, deep-copied, never modified."""

from __future__ import annotations

import copy

from ..data._preprocessing import Preprocessing
from ._backbone import Backbone
from ._registry import Family, is_path, register_family
from ._weights import load_file_into


class ModuleFamily(Family):
    name = "module"

    def forward_features(self, backbone, x):
        model = backbone.model
        if hasattr(model, "forward_features"):
            return model.forward_features(x)
        return model(x)


def from_module(module, weights, preprocessing):
    """A :class:`Backbone` around a copy of ``module`` (``weights=None`` re-initialises it)."""
    model = copy.deepcopy(module)
    if is_path(weights):
        desc = load_file_into(model, weights)
    elif weights is None:
        for sub in model.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
        desc = None
    else:
        desc = "as given"
    return Backbone(
        model, name=type(module).__name__, family="module",
        preprocessing=Preprocessing().replace(**(preprocessing or {})), weights=desc,
    )


register_family(ModuleFamily())
