"""One training step of the whole Lite0: NCHW (skorch's layout) against channels_last (sktransfer's).

Lite0 with a new linear head, BatchNorm in train mode, cross-entropy, fused AdamW; 32 random
images at 64 px (the size of ``finetune.py``'s comparison with skorch). Median of 10 steps after
3 warm-up steps, two rounds. How much channels_last gains depends on the CPU's kernels (the
machine line names them). Usage::

    python benchmarks/train_step.py [--image-size 64] [--batch-size 32]
"""

import argparse
import time

import torch
from _common import machine
from torch import nn

from sktransfer import load_backbone


def step_seconds(memory_format, image_size, batch_size):
    torch.manual_seed(0)
    model = load_backbone("efficientnet_lite0").model
    model.reset_classifier(10)
    model = model.to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.rand(batch_size, 3, image_size, image_size).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch_size,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    print(f"One training step, Lite0, batch {args.batch_size} at {args.image_size} px\n")
    print("| round | NCHW (ms) | channels_last (ms) | NCHW / channels_last |")
    print("|---:|---:|---:|---:|")
    for round_ in (1, 2):
        nchw, last = (step_seconds(f, args.image_size, args.batch_size)
                      for f in (torch.contiguous_format, torch.channels_last))
        print(f"| {round_} | {1000 * nchw:.0f} | {1000 * last:.0f} | {nchw / last:.2f}x |")


if __name__ == "__main__":
    main()
