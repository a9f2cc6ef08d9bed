"""The :class:`Backbone`: a pretrained network, its stages and its preprocessing."""

from __future__ import annotations

import os

from torch import nn

from ._registry import family as family_adapter

# containers whose children are stages of their own
STAGE_CONTAINERS = ("features", "layers", "trunk_output", "blocks", "stages")
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class Backbone(nn.Module):
    """A pretrained network prepared for transfer.

    Attributes
    ----------
    model : nn.Module
        The complete network, classification head included.
    name : str
        Registry name (``"efficientnet_lite0"``, ``"resnet18"``, ``"timm/..."``,
        or the class name of a user module).
    family : str
        The registered :class:`~sktransfer.backbones._registry.Family` that
        runs ``model`` (``forward_features``) and splits it into stages.
    body : tuple of str
        For torchvision families (and backbones cut at a stage), the modules
        applied in sequence.
    stages : list of (str, list of str)
        Stage names and their parameter names, input to output.
    preprocessing : Preprocessing
        Native input size, normalisation and interpolation.
    weights : str or None
        Description of the loaded weights.
    cut_stage : int or None
        The stage after which the backbone was cut (``layer="stageK"`` of a
        fine-tuning estimator); ``None``: whole.
    """

    def __init__(self, model, *, name, family, preprocessing, body=(), stages=None, weights=None):
        super().__init__()
        self.model = model
        self.name = name
        self.family = family
        self.body = tuple(body)
        self.preprocessing = preprocessing
        self.weights = weights
        if stages is None:
            stages = family_adapter(self.family).stages(self)
        self.stages = stages if stages is not None else generic_stages(self)
        self.cut_stage = None  # set by backbones._cut.cut_backbone

    # -- forward passes -------------------------------------------------
    def forward(self, x):
        """The model's own output (ImageNet logits for pretrained classifiers)."""
        return self.model(x)

    def forward_features(self, x):
        """Last feature map before pooling: (N, C, H, W), (N, L, D) tokens or (N, D)."""
        return family_adapter(self.family).forward_features(self, x)

    # -- introspection --------------------------------------------------
    def stage_output_modules(self):
        """Name of the module whose output is each stage's output."""
        modules = dict(self.model.named_modules())
        names = []
        for _, params in self.stages:
            prefix = os.path.commonprefix([p.split(".") for p in params])
            while prefix and ".".join(prefix) not in modules:
                prefix = prefix[:-1]
            if prefix:
                names.append(".".join(prefix))
                continue
            last = params[-1].split(".")
            candidates = [".".join(last[: i + 1]) for i in range(len(last) - 1)]
            names.append(next((c for c in candidates if c in modules), last[0]))
        adapter = family_adapter(self.family)
        return [adapter.output_module(self, name) for name in names]

    def head_parameter_names(self):
        staged = {p for _, params in self.stages for p in params}
        return [n for n, _ in self.model.named_parameters() if n not in staged]


def generic_stages(backbone, exclude=()):
    """Stages from the module tree: the body's children, containers expanded.

    Parameter-free entries are dropped and a lone normalisation layer joins
    the stage before it, so that a stage is always "a block and its norm".
    Groups containing a module named in ``exclude`` are left out.
    """
    model = backbone.model
    if backbone.body:
        top = list(backbone.body)
    else:
        top = [n for n, _ in model.named_children()]
        direct = [n for n, _ in model.named_parameters(recurse=False)]
        if direct:
            top = direct + top
    entries = []
    children = dict(model.named_children())
    for name in top:
        child = children.get(name)
        if name in STAGE_CONTAINERS and child is not None and len(list(child.children())) > 1:
            entries.extend(f"{name}.{n}" for n, _ in child.named_children())
        else:
            entries.append(name)
    groups = []
    modules = dict(model.named_modules())
    for entry in entries:
        module = modules.get(entry)
        if module is not None and not any(True for _ in module.parameters()):
            continue
        if groups and isinstance(module, _NORM_TYPES):
            groups[-1][1].append(entry)
        else:
            groups.append((entry, [entry]))
    # groups holding an excluded module (a classifier) are not stages
    groups = [g for g in groups if not any(x == p or x.startswith(p + ".") for x in exclude for p in g[1])]
    return prefix_stages(model, groups)


def prefix_stages(model, groups):
    names = [n for n, _ in model.named_parameters()]
    stages = []
    for stage_name, prefixes in groups:
        params = [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]
        if params:
            stages.append((stage_name, params))
    return stages
