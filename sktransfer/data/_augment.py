"""Batch augmentation on the device: one random affine warp per image."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


class RandomAffine:
    """Random resized crop + horizontal flip + small shear, as one affine warp.

    Parameters
    ----------
    scale : (float, float)
        Range of the area kept (random resized crop zoom).
    ratio : (float, float)
        Range of aspect-ratio changes.
    shear_degrees : float
        Maximum shear angle.
    flip : bool, default=False
        Random horizontal flips with probability 0.5.

    Examples
    --------
    >>> import torch
    >>> from sktransfer import RandomAffine
    >>> RandomAffine(flip=False)(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, scale=(0.7, 1.0), ratio=(3 / 4, 4 / 3), shear_degrees=8.0, flip=False):
        self.scale = scale
        self.ratio = ratio
        self.shear_degrees = shear_degrees
        self.flip = flip

    def __call__(self, images, generator=None):
        return warp(images, self.draw(images.shape[0], generator))

    def draw(self, n, generator=None):
        """``n`` random affine matrices of shape (n, 2, 3) (for ``F.affine_grid``), on the CPU."""

        def uniform(lo, hi):
            return torch.rand(n, generator=generator) * (hi - lo) + lo

        area = uniform(*self.scale)
        log_ratio = uniform(math.log(self.ratio[0]), math.log(self.ratio[1]))
        aspect = torch.exp(log_ratio)
        sx = torch.sqrt(area * aspect).clamp(max=1.0)
        sy = torch.sqrt(area / aspect).clamp(max=1.0)
        tx = (1 - sx) * uniform(-1.0, 1.0)
        ty = (1 - sy) * uniform(-1.0, 1.0)
        shear = torch.tan(torch.deg2rad(uniform(-self.shear_degrees, self.shear_degrees)))
        if self.flip:
            sx = torch.where(torch.rand(n, generator=generator) < 0.5, -sx, sx)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = sx
        theta[:, 0, 1] = shear * sy
        theta[:, 0, 2] = tx
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = ty
        return theta

    def __repr__(self):
        return (f"RandomAffine(scale={self.scale}, ratio={self.ratio}, "
                f"shear_degrees={self.shear_degrees}, flip={self.flip})")


def warp(images, theta):
    """``images`` (N, C, H, W) warped by the affine matrices ``theta`` (N, 2, 3, or (1, 2, 3) for
    all), bilinear, borders repeated; in the images' dtype even under autocast (whose bf16 grid
    misplaced samples by up to 0.8 px at 224 px), and in their memory format."""
    with torch.autocast(images.device.type, enabled=False):
        theta = theta.to(images.device, images.dtype).expand(images.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return in_memory_format_of(images, out)


def in_memory_format_of(x, augmented):
    """``augmented`` in ``x``'s memory format. ``grid_sample`` (:func:`warp`), and most
    augmentations users write, return NCHW tensors, which sent every augmented training step back
    to NCHW kernels: keeping the batch channels_last made default fits 1.4-1.8x faster on an
    AVX-512 CPU (docs/benchmarks.md). The Trainer applies it to what any augmentation returns."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return augmented.contiguous(memory_format=torch.channels_last)
    return augmented


def resolve_augment(augment):
    """``augment`` parameter -> a callable ``f(batch) -> batch`` on normalised (N, 3, H, W) batches, or None."""
    if isinstance(augment, (bool, np.bool_)):
        augment = bool(augment)
    if augment is True or (isinstance(augment, str) and augment == "default"):
        return RandomAffine()
    if isinstance(augment, str) and augment == "flip":
        return RandomAffine(flip=True)
    if augment is False or augment is None:
        return None
    if callable(augment):
        return augment
    raise ValueError(
        "augment must be 'default', 'flip', True, False/None, or a callable "
        f"f(images) -> images on normalised (N, 3, H, W) batches; got {augment!r}."
    )
