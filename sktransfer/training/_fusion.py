"""Weight-space averages of networks: WiSE-FT and model soups.

* WiSE-FT (Wortsman et al., CVPR 2022): ``θ <- α θ_finetuned + (1 - α) θ_pretrained``
  (:func:`interpolate`, the ``fusion_alpha`` parameter).
* Model soups (Wortsman et al., ICML 2022): the weighted mean of several
  fine-tuned networks' parameters (:func:`average_states`, ``sktransfer.fuse``).

Both average every tensor of the state dict, buffers included: BatchNorm
running statistics are averaged like the weights, integer buffers (BatchNorm's
``num_batches_tracked``) are averaged and rounded.
"""

from __future__ import annotations

import torch


def average_states(states, weights):
    """``sum_i weights[i] * states[i]`` per tensor (float64 sums; integer tensors rounded), on the
    device and in the dtype of the first state's tensors; ``weights`` are used as given."""
    out = {}
    for name, first in states[0].items():
        total = sum(float(w) * state[name].to(first.device).double() for w, state in zip(weights, states))
        out[name] = (total if first.is_floating_point() else total.round()).to(first.dtype)
    return out


def average_modules(modules, weights):
    """:func:`average_states` of the modules' state dicts, on the CPU."""
    return average_states([{k: v.cpu() for k, v in m.state_dict().items()} for m in modules], weights)


def interpolate(model, pretrained, alpha):
    """WiSE-FT in place: every tensor of ``model`` moved to ``alpha`` of the way from ``pretrained``
    (a state dict) to itself."""
    with torch.no_grad():
        current = model.state_dict()
        fused = average_states([current, pretrained], [alpha, 1 - alpha])
        for name, tensor in current.items():
            tensor.copy_(fused[name])
