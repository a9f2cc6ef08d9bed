"""Depthwise convolutions on 1x1 maps: sktransfer's short cut against torch's kernel.

EfficientNet-Lite0 as ``load_backbone`` builds it (``DepthwiseConv2d``, which multiplies by
the centre tap on 1x1 maps) against the same model with plain ``nn.Conv2d`` restored, side by
side: an eval forward pass and a training step (forward + backward) on 32 random images, at
several image sizes. Best of 5 after a warm-up. Usage::

    python benchmarks/depthwise.py
"""

import copy

import torch
from _common import best_of, machine
from torch import nn

from sktransfer import load_backbone
from sktransfer.backbones._fast_layers import DepthwiseConv2d


def main():
    fast = load_backbone("efficientnet_lite0").model
    plain = copy.deepcopy(fast)
    for m in plain.modules():
        if type(m) is DepthwiseConv2d:
            m.__class__ = nn.Conv2d
    print(f"Machine: {machine()}\n")
    print("| image size | last feature map | eval forward, nn.Conv2d (ms) | eval forward, sktransfer (ms) "
          "| train step, nn.Conv2d (ms) | train step, sktransfer (ms) | features equal |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for size in (32, 40, 64):
        x = torch.rand(32, 3, size, size)
        row = []
        for model in (plain, fast):
            model.eval()
            with torch.no_grad():
                row.append(best_of(lambda m=model, x=x: m.forward_features(x), 5))
        for model in (plain, fast):
            model.train()
            row.append(best_of(lambda m=model, x=x: m.forward_features(x).mean().backward(), 5))
        plain.eval()
        fast.eval()
        with torch.no_grad():
            a, b = plain.forward_features(x), fast.forward_features(x)
        times = " | ".join(f"{1000 * t:.0f}" for t in row)
        print(f"| {size} | {tuple(a.shape[-2:])} | {times} | {torch.equal(a, b)} |")


if __name__ == "__main__":
    main()
