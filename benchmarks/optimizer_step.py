"""One AdamW step over Lite0's parameters: the per-tensor loop, foreach, and the fused kernel.

The parameters sit in 9 groups (fine-tuning's optimizer has about as many: the head and one
per stage); every parameter has a gradient. Best of 3 runs of 50 steps, after a warm-up step.
Usage::

    python benchmarks/optimizer_step.py
"""

import time

import torch
from _common import machine

from sktransfer import load_backbone


def main():
    print(f"Machine: {machine()}\n")
    params = list(load_backbone().model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    print(f"{sum(p.numel() for p in params) / 1e6:.1f} M parameters in {len(params)} tensors\n")
    print("| AdamW | ms per step |")
    print("|---|---:|")
    for name, kwargs in [("per-tensor loop (torch's CPU default)", {"foreach": False}),
                         ("foreach", {"foreach": True}), ("fused (sktransfer)", {"fused": True})]:
        optimizer = torch.optim.AdamW([{"params": params[i::9]} for i in range(9)], lr=1e-3, **kwargs)
        optimizer.step()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(50):
                optimizer.step()
            best = min(best, (time.perf_counter() - start) / 50)
        print(f"| {name} | {best * 1000:.1f} |")


if __name__ == "__main__":
    main()
