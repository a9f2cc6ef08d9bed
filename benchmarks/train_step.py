"""One training step of the whole Lite0: NCHW (skorch's layout), channels_last, and channels_last with
freed memory kept in the process (sktransfer's training loop: ``sktransfer._allocator``).

Lite0 with a new linear head, BatchNorm in train mode, cross-entropy, fused AdamW; 32 random
images at 64 px (the size of ``finetune.py``'s comparison with skorch). Median of 10 steps after
3 warm-up steps; each configuration in a fresh process (the allocator's settings outlive a scope),
two rounds. The gains depend on the CPU's kernels and the C library (the machine line names the
kernels). Usage::

    python benchmarks/train_step.py [--image-size 64] [--batch-size 32]
"""

import argparse
import contextlib
import subprocess
import sys
import time

import torch
from _common import machine
from torch import nn

from sktransfer import load_backbone
from sktransfer._allocator import keep_freed_memory

CONFIGS = {"NCHW": (torch.contiguous_format, False), "channels_last": (torch.channels_last, False),
           "channels_last, freed memory kept (sktransfer)": (torch.channels_last, True)}


def step_seconds(memory_format, keep, image_size, batch_size):
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

    with keep_freed_memory() if keep else contextlib.nullcontext():
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
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(step_seconds(*CONFIGS[args.one], args.image_size, args.batch_size))
        return
    print(f"Machine: {machine()}\n")
    print(f"One training step, Lite0, batch {args.batch_size} at {args.image_size} px (ms, median of 10)\n")
    print("| round | " + " | ".join(CONFIGS) + " |")
    print("|---:|" + "---:|" * len(CONFIGS))
    for round_ in (1, 2):
        cells = []
        for name in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--one", name, "--image-size", str(args.image_size),
                                  "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
            cells.append(f"{1000 * float(out.stdout.split()[-1]):.0f}")
        print(f"| {round_} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
