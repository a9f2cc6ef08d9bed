"""Optimizers (one parameter group per backbone stage) and per-step learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import torch

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant", "linear", "onecycle")


def make_optimizer(net, name, lr, weight_decay, backbone_lr_scale=1.0, layer_decay=None, extra=()):
    """Parameter groups: the new head (``lr``, ``weight_decay``), one per backbone stage, and
    ``extra`` parameters of loss terms (a domain classifier) like the head.

    Backbone groups get ``lr * backbone_lr_scale * layer_decay ** (depth from the top)``
    and no optimizer weight decay (their regulariser is ``reg_lambda``).
    """
    groups = [{"params": [p for m in net.head_modules() for p in m.parameters()], "lr": lr, "weight_decay": weight_decay}]
    stages = net.backbone.stages
    model = net.backbone.model
    n = len(stages)
    for i, (_, names) in enumerate(stages):
        params = [model.get_parameter(p) for p in names]
        params = [p for p in params if p.requires_grad]
        if not params:
            continue
        scale = backbone_lr_scale * (layer_decay ** (n - 1 - i) if layer_decay else 1.0)
        groups.append({"params": params, "lr": lr * scale, "weight_decay": 0.0})
    extra = list(extra)
    if extra:
        groups.append({"params": extra, "lr": lr, "weight_decay": weight_decay})
    for group in groups:
        group["initial_lr"] = group["lr"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    adam = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    try:
        # one fused kernel for all parameters: an optimizer step measured 3.7x faster on the CPU
        # than the per-tensor loop (docs/benchmarks.md)
        return adam(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):  # a device or dtype without the fused kernel
        return adam(groups, lr=lr)


def make_scheduler(optimizer, schedule, total_steps, warmup_fraction=0.1):
    """A per-step ``LambdaLR``: linear warm-up, then the named decay."""
    if callable(schedule):
        return schedule(optimizer)
    total_steps = max(1, int(total_steps))
    warmup = int(warmup_fraction * total_steps) if schedule in ("cosine", "linear") else 0

    def factor(step):
        if schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if schedule == "cosine":
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "linear":
            return max(0.01, 1.0 - progress)
        # onecycle: triangular up for 30 %, cosine down
        peak = 0.3 * total_steps
        if step < peak:
            return 0.04 + 0.96 * step / peak
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (step - peak) / max(1, total_steps - peak)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def current_lr(optimizer):
    return float(np.max([g["lr"] for g in optimizer.param_groups]))
