"""Faster equivalents of torch layers, swapped into the models sktransfer builds."""

from __future__ import annotations

from torch import nn


class DepthwiseConv2d(nn.Conv2d):
    """A bias-free depthwise ``nn.Conv2d`` that multiplies by the centre tap on a 1x1 map.

    On a 1x1 input with zero padding of exactly the kernel's half-width (odd
    kernel, no dilation), the output is 1x1 and every tap but the centre one
    meets padding, so the convolution is ``x * w_centre``: the same numbers,
    bit for bit (tested). Only bias-free convolutions are swapped, the usual
    case before a BatchNorm; with a bias, torch's kernel may round the sum
    differently. torch's CPU kernel takes about 20x longer on a
    1x1 map than on a 2x2 one; the last stages of a CNN run on 1x1 maps when
    images are small (32 px for EfficientNet-Lite0). Parameters, ``state_dict``
    and every other input size are those of ``nn.Conv2d``.
    """

    def forward(self, x):
        kh, kw = self.kernel_size
        if (
            x.shape[-2:] == (1, 1)
            and self.padding == (kh // 2, kw // 2)
            and self.dilation == (1, 1)
        ):
            return x * self.weight[:, 0, kh // 2, kw // 2].view(1, -1, 1, 1)
        return super().forward(x)


def _is_depthwise(module):
    return (
        type(module) is nn.Conv2d
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
        and module.bias is None
        and module.padding_mode == "zeros"
        and module.kernel_size[0] % 2 == 1
        and module.kernel_size[1] % 2 == 1
    )


def use_fast_layers(model):
    """Swap, in place, the class of ``model``'s depthwise convolutions (weights untouched)."""
    for module in model.modules():
        if _is_depthwise(module):
            module.__class__ = DepthwiseConv2d
    return model
