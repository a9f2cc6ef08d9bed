"""The outputs of requested layers of a backbone, pooled into one vector per image."""

from __future__ import annotations

import re
import warnings

import torch
from torch import nn

from ._hooks import record
from ._pooling import pool

EMBEDDING = "embedding"
LOGITS = "logits"


def resolve_layers(backbone, layer):
    """``layer`` parameter -> list of (label, module name or None).

    Labels: ``"embedding"`` (pooled last feature map; ``layer=None``),
    ``"logits"`` (the pretrained model's own output), ``"stageK"`` (output of
    stage K, see ``Backbone.stages``) or any module name of ``backbone.model``
    (torchvision feature-extraction node names of module outputs, timm
    feature module names such as ``"blocks.3"``).
    """
    if layer is None:
        requested = [EMBEDDING]
    elif isinstance(layer, str):
        requested = [layer]
    elif isinstance(layer, (list, tuple)) and layer and all(isinstance(l, str) or l is None for l in layer):
        requested = [EMBEDDING if l is None else l for l in layer]
    else:
        raise TypeError(
            "layer must be None, a layer name (str) or a non-empty list of names, "
            f"got {layer!r}."
        )
    if len(set(requested)) != len(requested):
        raise ValueError(f"layer lists a name twice: {requested}.")
    modules = dict(backbone.model.named_modules())
    stage_modules = backbone.stage_output_modules()
    plan = []
    for name in requested:
        if name in (EMBEDDING, LOGITS):
            plan.append((name, None))
            continue
        match = re.fullmatch(r"stage(\d+)", name)
        if match and int(match.group(1)) < len(stage_modules):
            plan.append((name, stage_modules[int(match.group(1))]))
        elif name in modules and name != "":
            plan.append((name, name))
        else:
            stage_names = [f"stage{i}" for i in range(len(stage_modules))]
            top = [n for n, _ in backbone.model.named_children()]
            raise ValueError(
                f"Unknown layer {name!r} for backbone {backbone.name!r}. Valid: 'auto', None or "
                f"'{EMBEDDING}' (pooled embedding), '{LOGITS}', stages {stage_names} "
                f"(= modules {stage_modules}), or any module name such as {top} "
                "(all names: dict(model.named_modules()))."
            )
    return plan


def forward_layers(backbone, x, plan, pooling):
    """Pooled, concatenated outputs of the planned layers for one batch."""
    labels = [label for label, _ in plan]
    modules = dict(backbone.model.named_modules())
    taps = {label: modules[module] for label, module in plan if module is not None}
    captured = {}

    def whole_outputs():
        if LOGITS in labels:
            captured[LOGITS] = backbone(x)
        if EMBEDDING in labels:
            captured[EMBEDDING] = backbone.forward_features(x)

    # the taps record during the passes the logits and embedding need anyway
    seen = dict(record(whole_outputs, taps))
    missing = {label: module for label, module in taps.items() if label not in seen}
    if missing:
        # one more pass, which stops once every remaining tapped module has run
        seen.update(record(lambda: backbone(x), missing, stop_when_done=True))
    captured.update(seen)
    return torch.cat([pool(captured[label], pooling) for label in labels], dim=1)


class PlanModule(nn.Module):
    """The planned layers of a backbone as one module (what gets traced)."""

    def __init__(self, backbone, plan, pooling):
        super().__init__()
        self.backbone = backbone
        self.plan = list(plan)
        self.pooling = pooling

    def forward(self, x):
        return forward_layers(self.backbone, x, self.plan, self.pooling)


def optimize_for_cpu(backbone, plan, pooling, image_size, tolerance=0.9999):
    """Trace, freeze and ``optimize_for_inference`` the plan (BatchNorm folded into
    convolutions, fused oneDNN kernels), or ``None`` when that is not possible.

    The result is checked against the eager model on a batch of another size
    (cosine >= ``tolerance`` for every sample); any failure or mismatch falls
    back to ``None``, i.e. eager execution.
    """
    module = PlanModule(backbone, plan, pooling).eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, image_size, image_size, generator=gen).contiguous(memory_format=torch.channels_last)
    check = torch.randn(3, 3, image_size, image_size, generator=gen).contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                traced = torch.jit.trace(module, example, check_trace=False)
                optimized = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            with torch.inference_mode():
                expected = module(check)
                got = optimized(check)
    except Exception:  # tracing is best effort: hooks, data-dependent shapes...
        return None
    if got.shape != expected.shape:
        return None
    cosine = torch.nn.functional.cosine_similarity(got.float(), expected.float(), dim=1, eps=1e-12)
    if not bool((cosine >= tolerance).all()):
        return None
    return optimized
