"""Weight-space fusion (WiSE-FT; Wortsman et al., 2022): θ <- α θ_finetuned + (1 - α) θ_pretrained."""

from __future__ import annotations

import torch


def fuse(model, pretrained, alpha):
    """Interpolate every tensor of ``model`` toward ``pretrained`` (a state dict); integer buffers rounded."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            fused = alpha * tensor.double() + (1 - alpha) * pretrained[name].to(tensor.device).double()
            tensor.copy_(fused if tensor.is_floating_point() else fused.round())
