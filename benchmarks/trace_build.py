"""What a process's first extractor pays: building the traced CPU module, and preparing images
given one at a time (files, PIL images).

A. For a few backbones at 224 px (channels_last, batch 8, 2 CPU threads): the time to trace and
   freeze the extraction plan, with and without ``torch.jit.optimize_for_inference`` on top, and
   the time each module then takes for ``--n`` images, against the eager forward: the frozen
   module run by the simple executor, with ``optimize_for_inference``, and with oneDNN Graph
   fusion (the profiling executor; what sktransfer runs), whose first pass, which profiles and
   compiles the shape, is reported apart. sktransfer builds the frozen module without
   ``optimize_for_inference`` (``optimize_for_cpu``).
B. Preparing ``--n`` decoded 256 px photographs for a 224 px and a 64 px network, batch by batch:
   one at a time (the path before), and in groups of one size (``prepare_images``, what files and
   PIL images go through).

Usage::

    python benchmarks/trace_build.py [--n 192] [--repeats 3]
"""

import argparse
import contextlib
import time
import warnings

import torch
from _common import best_of, machine, photos

from sktransfer import load_backbone
from sktransfer.backbones._layer_outputs import PlanModule, onednn_fusion, optimize_for_cpu, resolve_layers
from sktransfer.data._preprocessing import Preprocessing, prepare_batch, prepare_images

BACKBONES = ["efficientnet_lite0", "resnet18", "mobilenet_v3_large", "convnext_tiny"]


def build(backbone, plan, optimize):
    """sktransfer's own build of the plan (``optimize_for_cpu``), ``optimize_for_inference`` on top if asked."""
    start = time.perf_counter()
    module = optimize_for_cpu(backbone, plan, "avg", 224).module
    if optimize:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            module = torch.jit.optimize_for_inference(module)
    return module, time.perf_counter() - start


def run(fn, x, batch, fused=False):
    with torch.inference_mode(), torch.jit.optimized_execution(fused), \
            onednn_fusion() if fused else contextlib.nullcontext():
        for i in range(0, len(x), batch):
            fn(x[i:i + batch])


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def part_a(n, repeats):
    print("| backbone | weights | build: trace + freeze (s) | build: + optimize_for_inference (s) "
          f"| {n} images, eager (s) | frozen (s) | frozen + optimize_for_inference (s) "
          "| frozen, oneDNN fusion (s) | its first pass, compiling (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    x = torch.randn(n, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    for name in BACKBONES:
        # only the embedded Lite0 has weights here (no network): the others run random init,
        # which takes the same kernels
        weights = "DEFAULT" if name == "efficientnet_lite0" else None
        backbone = load_backbone(name, weights=weights).eval().requires_grad_(False)
        plan = resolve_layers(backbone, None)  # layer=None
        module = PlanModule(backbone, plan, "avg").eval()  # the eager forward
        builds = {False: [], True: []}
        for _ in range(repeats):
            for optimize in (False, True):
                builds[optimize].append(build(backbone, plan, optimize)[1])
        frozen, _ = build(backbone, plan, False)
        optimized, _ = build(backbone, plan, True)
        times = [best_of(lambda fn=fn: run(fn, x, 8), repeats=repeats) for fn in (module, frozen, optimized)]
        fused, _ = build(backbone, plan, False)
        first = timed(lambda: run(fused, x, 8, fused=True))
        times.append(best_of(lambda: run(fused, x, 8, fused=True), repeats=repeats))
        print(f"| {name} | {'ImageNet (embedded)' if weights else 'random init'} | {min(builds[False]):.3f} "
              f"| {min(builds[True]):.3f} | {times[0]:.2f} | {times[1]:.2f} | {times[2]:.2f} | {times[3]:.2f} "
              f"| {first:.2f} |")


def part_b(n, repeats):
    images = [torch.from_numpy(img).permute(2, 0, 1) for img in photos(n, 256)]
    cpu = torch.device("cpu")
    print(f"\n{n} decoded 256 px photographs (uint8) to network input, channels_last, in the batches "
          "batch_size='auto' takes on the CPU:")
    for size, batch in ((224, 8), (64, 64)):
        spec = Preprocessing(image_size=size)
        batches = [images[i:i + batch] for i in range(0, n, batch)]

        def one_at_a_time(spec=spec, batches=batches):
            return [torch.cat([prepare_batch(img[None], spec, cpu, True) for img in b]) for b in batches]

        def grouped(spec=spec, batches=batches):
            return [prepare_images(iter(b), spec, cpu, True) for b in batches]

        same = all(torch.equal(u, v) for u, v in zip(one_at_a_time(), grouped(), strict=True))
        one, together = best_of(one_at_a_time, repeats), best_of(grouped, repeats)
        print(f"  {size} px, batches of {batch}: one at a time {one:.3f} s; in groups of one size "
              f"(prepare_images) {together:.3f} s ({one / together:.2f}x); identical results: {same}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    part_a(args.n, args.repeats)
    part_b(args.n, args.repeats)


if __name__ == "__main__":
    main()
