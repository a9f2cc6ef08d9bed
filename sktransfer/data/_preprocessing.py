"""What a backbone expects of its input, and the tensor ops that provide it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
# a JPEG file is decoded at a reduced scale only while both sides stay at least this many times
# the input size: the antialiased resize then does the last reduction (at 1x, min cosine 0.990)
JPEG_DRAFT_MARGIN = 2
# images of one shape and dtype given one at a time are prepared together up to this many bytes
# of input (five 256 px RGB photographs): fewer kernel calls, while the float copies stay in the
# CPU's caches (groups of 32 MiB, 64 such photographs, took 1.8x as long; docs/benchmarks.md)
GROUP_BYTES = 2**20


@dataclass(frozen=True)
class Preprocessing:
    """Input specification of a backbone.

    Parameters
    ----------
    image_size : int, default=224
        Native square input size in pixels.
    mean, std : tuple of 3 floats, default=ImageNet statistics
        Per-channel normalisation applied to RGB values in [0, 1].
    interpolation : {"bilinear", "bicubic", "nearest", "area"}, default="bilinear"
        Resampling used to resize images (with antialiasing when shrinking).
    jpeg_draft : bool, default=True
        Decode a JPEG file (or MPO, a camera's JPEG with previews) at 1/2,
        1/4 or 1/8 of its size (libjpeg's DCT scaling, Pillow's
        ``Image.draft``) when the reduced image is still at least
        ``JPEG_DRAFT_MARGIN`` (2) times ``image_size`` on both sides; it is
        then resized as any image. Large photographs decode several times
        faster, and their embeddings stay within cosine 0.998 of a full
        decode's (docs/benchmarks.md). ``False``: every file is decoded at
        full size. Arrays and PIL images are never affected.

    Examples
    --------
    >>> from sktransfer import Preprocessing
    >>> Preprocessing(image_size=96, interpolation="bicubic").image_size
    96
    """

    image_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    interpolation: str = "bilinear"
    jpeg_draft: bool = True

    def __post_init__(self):
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("Preprocessing mean and std need 3 values each (R, G, B).")
        if any(float(s) <= 0 for s in self.std):
            raise ValueError(f"Preprocessing std must be positive, got {self.std}.")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Preprocessing interpolation must be one of {_INTERPOLATIONS}, "
                f"got {self.interpolation!r}."
            )
        if not isinstance(self.jpeg_draft, (bool, np.bool_)):
            raise TypeError(f"Preprocessing jpeg_draft must be True or False, got {self.jpeg_draft!r}.")
        object.__setattr__(self, "jpeg_draft", bool(self.jpeg_draft))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "image_size", int(self.image_size))

    def replace(self, **changes):
        """A copy with some fields changed (``None`` values are ignored)."""
        fields = dict(vars(self))
        fields.update({k: v for k, v in changes.items() if v is not None})
        return Preprocessing(**fields)


def draft_side(spec):
    """The smallest side a JPEG file may be decoded at for ``spec`` (``None``: full size)."""
    return JPEG_DRAFT_MARGIN * spec.image_size if spec.jpeg_draft else None


def to_rgb(batch):
    """(N, C, H, W) with C in {1, 3, 4} -> (N, 3, H, W); alpha is dropped."""
    channels = batch.shape[1]
    if channels == 3:
        return batch
    if channels == 1:
        return batch.expand(-1, 3, -1, -1)
    if channels == 4:
        return batch[:, :3]
    raise ValueError(f"Images need 1, 3 or 4 channels, got {channels}.")


def resize(batch, size, interpolation):
    """Resize a float (N, C, H, W) batch to ``size`` x ``size`` (antialiased when bilinear or bicubic)."""
    if tuple(batch.shape[-2:]) == (size, size):
        return batch
    if interpolation in ("nearest", "area"):
        return F.interpolate(batch, size=(size, size), mode=interpolation)
    try:
        return F.interpolate(batch, size=(size, size), mode=interpolation, align_corners=False, antialias=True)
    except RuntimeError as exc:
        # CUDA's antialiased kernels keep each output's filter weights in shared memory: shrinking
        # more than about 47x (bicubic, float32) does not fit there. The CPU's kernel has no limit.
        if batch.device.type == "cpu" or "shared memory" not in str(exc):
            raise
        return resize(batch.cpu(), size, interpolation).to(batch.device)


def _resized(images, spec, device):
    """``(float32 images at the input size on device, white value)``: uint8 stays in 0-255.

    Alpha is dropped and grey resized as one channel before any work is spent on
    them. uint8 images move to the device as uint8 (a quarter of the bytes) and
    become float there, in the NCHW layout whose resizing kernels are fastest;
    their division by 255 waits for the normalisation, which does it in the same
    pass. Resizing is linear, so this equals resizing the divided values.
    """
    if images.shape[1] == 4:
        images = images[:, :3]
    elif images.shape[1] not in (1, 3):
        to_rgb(images)  # raises the clear error
    white = 255.0 if images.dtype == torch.uint8 else 1.0
    images = to_device_async(images, device)
    if white != 1.0:
        images = images.contiguous().float()
    return resize(images, spec.image_size, spec.interpolation), white


def to_device_async(images, device):
    """``images`` on ``device``; from the CPU to a GPU through page-locked memory, so that the copy
    does not wait for the GPU's earlier work and the CPU can go on meanwhile."""
    if device.type == "cuda" and images.device.type == "cpu":
        if not (images.is_contiguous() or images.is_contiguous(memory_format=torch.channels_last)):
            images = images.contiguous()  # a view with gaps (RGBA's RGB) would be copied again
        images = images.pin_memory()  # itself when pinned already
    return images.to(device, non_blocking=True)


def _normalized(images, white, spec, channels_last):
    """``(images / white - mean) / std`` as RGB float32, in one pass over a new tensor."""
    scale = torch.tensor([1.0 / (white * s) for s in spec.std], dtype=torch.float32, device=images.device)
    shift = torch.tensor([m / s for m, s in zip(spec.mean, spec.std)], dtype=torch.float32, device=images.device)
    out = to_rgb(images).mul(scale.view(1, 3, 1, 1)).sub_(shift.view(1, 3, 1, 1))  # the input is never written
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def prepare_batch(images, spec, device, channels_last=False):
    """Turn raw images into the backbone's normalised input.

    ``images`` is a (N, C, H, W) tensor, float32 in [0, 1] or uint8 in
    [0, 255], or a list of (C, H, W) such tensors of possibly different sizes
    (see :func:`prepare_images`). Nothing is modified in place. Each image's
    values depend on it alone, not on the others in the batch.
    """
    if isinstance(images, (list, tuple)):
        return prepare_images(images, spec, device, channels_last)
    images, white = _resized(images, spec, device)
    return _normalized(images, white, spec, channels_last)


def prepare_images(images, spec, device, channels_last=False):
    """:func:`prepare_batch` of (C, H, W) tensors taken one at a time from an iterable (a
    generator decoding files, for instance).

    Runs of images with the same shape and dtype are stacked and prepared as
    one batch, up to ``GROUP_BYTES`` of input at a time; the result is the
    same as preparing them one by one (``benchmarks/trace_build.py``).
    """
    parts, group, group_bytes = [], [], 0
    for image in images:
        nbytes = image.numel() * image.element_size()
        if group and (image.shape != group[0].shape or image.dtype != group[0].dtype
                      or group_bytes + nbytes > GROUP_BYTES):
            parts.append(prepare_batch(torch.stack(group), spec, device, channels_last))
            group, group_bytes = [], 0
        group.append(image)
        group_bytes += nbytes
    if group:
        parts.append(prepare_batch(torch.stack(group), spec, device, channels_last))
    if len(parts) == 1:
        return parts[0]
    out = torch.cat(parts)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
