"""Pooling of feature maps into vectors."""

from __future__ import annotations

import torch

POOLINGS = ("avg", "max", "avgmax", "catavgmax", "gem", "token", None)
GEM_P = 3.0


def pool(features, pooling):
    """(N, C, H, W) maps or (N, L, D) tokens -> (N, d); (N, D) passes through.

    Pooling runs in float32 whatever the autocast dtype of ``features``.
    """
    if isinstance(features, (tuple, list)):
        features = features[0]
    features = features.float()
    if features.ndim == 2:
        return features
    if pooling is None:
        return features.flatten(1)
    if features.ndim == 4:
        flat = features.flatten(2)  # (N, C, HW)
        axis = 2
    elif features.ndim == 3:
        flat = features  # (N, L, D): pool over tokens
        axis = 1
    else:
        return features.flatten(1)
    if pooling == "token":
        if features.ndim != 3:
            raise ValueError("pooling='token' needs token outputs (N, L, D), e.g. a ViT backbone.")
        return flat[:, 0]
    if pooling == "avg":
        return flat.mean(axis)
    if pooling == "max":
        return flat.amax(axis)
    if pooling == "avgmax":
        return 0.5 * (flat.mean(axis) + flat.amax(axis))
    if pooling == "catavgmax":
        return torch.cat([flat.mean(axis), flat.amax(axis)], dim=1)
    # generalised mean pooling (Radenovic et al.)
    return flat.clamp(min=1e-6).pow(GEM_P).mean(axis).pow(1.0 / GEM_P)
