"""Freezing backbone stages: no gradient, and BatchNorm statistics kept in eval mode."""

from __future__ import annotations

from numbers import Integral

from torch import nn


def check_freeze_depth(freeze_depth, n_stages):
    """``freeze_depth`` -> number of frozen stages (``"all"`` -> ``n_stages``)."""
    if isinstance(freeze_depth, str) and freeze_depth == "all":
        return n_stages
    if isinstance(freeze_depth, bool) or not isinstance(freeze_depth, Integral) or not 0 <= freeze_depth <= n_stages:
        raise ValueError(
            f"freeze_depth must be an int in [0, {n_stages}] (the number of backbone stages "
            f"frozen from the input; this backbone has {n_stages}) or 'all', got {freeze_depth!r}."
        )
    return int(freeze_depth)


BN_STATS = ("auto", "pretrained", "update")
# "auto" settings treat a training set of fewer batches than this as few images
FEW_BATCHES = 10
# backbone_lr_scale="auto": few images after a deep cut (see shallow_network), and otherwise
AUTO_BACKBONE_LR_SCALE = (0.3, 1.0)


def few_images(n_train, batch_size):
    """Whether ``n_train`` images make fewer than ``FEW_BATCHES`` batches (the few-image regime)."""
    return n_train < FEW_BATCHES * batch_size


def small_images(image_size, native_size):
    """Whether images are at a quarter of the backbone's native size or less (32 px for a 224 px
    backbone): the pretrained filters see them far from the scale they were trained at."""
    return image_size is not None and native_size is not None and image_size * 4 <= native_size


def shallow_network(image_size, out_side, native_size=None):
    """Whether the network trained ends at a feature map of stride 8 or less (Lite0's stage 3):
    ``out_side``, the smaller side of that map, is larger than a map of stride 16 would be,
    ``ceil(image_size / 16)``. That holds whether a network's strided layers round sizes up
    (Lite0, ResNet) or down (ConvNeXt), except down-rounding ones at 17-23 px. ``out_side=None``:
    not a map (a transformer's tokens); then whether the images are small (:func:`small_images`).

    With few images such a network keeps the backbone at the full rate and no mixup. After a cut
    that shallow the pretrained filters are generic and the images small for them, and adapting
    them measured better; after a deeper cut the pretrained features are good enough to keep
    close (docs/benchmarks.md, "Between the measured sizes" and "The rule follows the cut").
    """
    if out_side is None:
        return small_images(image_size, native_size)
    return image_size is not None and out_side > -(-image_size // 16)


def resolve_bn_stats(bn_stats, n_train, batch_size):
    """``"auto"`` -> ``"pretrained"`` with few images, else ``"update"``."""
    if bn_stats != "auto":
        return bn_stats
    return "pretrained" if few_images(n_train, batch_size) else "update"


def resolve_backbone_lr_scale(scale, n_train, batch_size, shallow=False):
    """``"auto"`` -> 0.3 with few images, unless the network trained is ``shallow``
    (:func:`shallow_network`); else 1.0.

    A shallow network (Lite0 cut after stage 3, as at 32 px) keeps 1.0 with few images too: its
    pretrained filters are generic and see the small images far from the scale they were trained
    at, and measured better adapted at the full rate.
    """
    if not (isinstance(scale, str) and scale == "auto"):
        return float(scale)
    return AUTO_BACKBONE_LR_SCALE[0 if few_images(n_train, batch_size) and not shallow else 1]


def freeze(net, n_frozen, bn_stats="update"):
    """Freeze the first ``n_frozen`` stages of ``net.backbone``; unfreeze the rest.

    ``bn_stats="pretrained"`` keeps every normalisation layer of the backbone on
    its running statistics in training too (see :func:`train_mode`).
    Returns the names (in ``net.backbone.model``) of the frozen parameters.
    """
    net.pretrained_norm_stats_ = bn_stats == "pretrained"
    backbone = net.backbone
    frozen = {p for _, params in backbone.stages[:n_frozen] for p in params}
    for name, param in backbone.model.named_parameters():
        param.requires_grad_(name not in frozen)
    # the pretrained classifier of the backbone is not used: never train it
    for name in backbone.head_parameter_names():
        backbone.model.get_parameter(name).requires_grad_(False)
    if n_frozen >= len(backbone.stages):
        for name in backbone.head_parameter_names():
            frozen.add(name)
    net.frozen_parameters_ = frozen
    return frozen


def _frozen_modules(net):
    frozen = getattr(net, "frozen_parameters_", set())
    if not frozen:
        return []
    prefixes = {name.rsplit(".", 1)[0] for name in frozen}
    modules = []
    for name, module in net.backbone.model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and name in prefixes:
            modules.append(module)
        elif isinstance(module, nn.modules.batchnorm._NormBase) and not any(
            True for _ in module.parameters(recurse=False)
        ):
            # affine-free norm layers: frozen when the preceding stage params are
            if any(p.startswith(name.rsplit(".", 1)[0] + ".") for p in frozen):
                modules.append(module)
    return modules


def train_mode(net):
    """``net.train()`` but frozen BatchNorm layers (and a fully frozen backbone) stay in eval mode;
    with ``freeze(..., bn_stats="pretrained")`` every BatchNorm layer does."""
    net.train()
    backbone = getattr(net, "backbone", None)
    if backbone is None:  # a head on precomputed features
        return
    if all(not p.requires_grad for p in backbone.parameters()):
        backbone.eval()
        return
    if getattr(net, "pretrained_norm_stats_", False):
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()
        return
    for module in _frozen_modules(net):
        module.eval()
