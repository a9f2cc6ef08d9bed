"""Optimizer, learning-rate schedule, epochs and evaluation for TransferNet."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ._data import batch_indices
from ._device import autocast
from ._freezing import train_mode

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant", "linear", "onecycle")


def make_optimizer(net, name, lr, weight_decay, backbone_lr_scale=1.0, layer_decay=None):
    """Parameter groups: the new head (``lr``, ``weight_decay``) and one per backbone stage.

    Backbone groups get ``lr * backbone_lr_scale * layer_decay ** (depth from the top)``
    and no optimizer weight decay (their regulariser is ``reg_lambda``).
    """
    groups = [{"params": [p for p in net.head.parameters()], "lr": lr, "weight_decay": weight_decay}]
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
    for group in groups:
        group["initial_lr"] = group["lr"]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


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


def run_epoch(net, data, train_idx, y, w, optimizer, scheduler, penalty, loss_fn, augment,
              device, batch_size, rng, bar=None):
    """One pass over ``train_idx``; returns the mean training loss (penalty excluded)."""
    train_mode(net)
    total, count = 0.0, 0.0
    for batch in batch_indices(len(train_idx), batch_size, rng):
        idx = train_idx[batch]
        x = data.batch(idx)
        if augment is not None:
            x = augment(x)
        target = torch.as_tensor(y[idx], device=device)
        weight = torch.as_tensor(w[idx], device=device, dtype=torch.float32)
        with autocast(device):
            logits = net(x)
        loss = loss_fn(logits, target, weight)
        reg = penalty()
        objective = loss if reg is None else loss + reg
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach()) * float(weight.sum())
        count += float(weight.sum())
        if bar is not None:
            bar.update(len(idx))
            bar.set_postfix(loss=f"{total / max(count, 1e-12):.4f}")
    return total / max(count, 1e-12)


def predict_logits(net, data, indices, device, batch_size):
    net.eval()
    outs = []
    with torch.inference_mode(), autocast(device):
        for start in range(0, len(indices), batch_size):
            outs.append(net(data.batch(indices[start:start + batch_size])).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(net, data, indices, y, w, loss_fn, score_fn, device, batch_size):
    """Weighted loss and score (accuracy, R², ...) on ``indices``."""
    logits = predict_logits(net, data, indices, device, batch_size)
    target = torch.as_tensor(y[indices])
    weight = torch.as_tensor(w[indices], dtype=torch.float32)
    return float(loss_fn(logits, target, weight)), float(score_fn(logits, target, weight))


class EpochTimer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def current_lr(optimizer):
    return float(np.max([g["lr"] for g in optimizer.param_groups]))
