"""On a CUDA GPU: where the time of ``PretrainedFeatureExtractor.transform`` goes, part by part.

Same images and backbone as ``gpu.py``'s part 1 (2048 photographs as 256x256 uint8, Lite0 at
224 px, bf16 autocast, channels_last), at batches of 64 and 256:

* the eager forward on ready GPU tensors, and the same forward captured once as a CUDA graph
  and replayed (no Python, no kernel launches per layer);
* the preprocessing alone (uint8 batch to the GPU, resize, normalise), its copy from pageable
  memory (as before 2026-12-04) and through page-locked memory (now);
* the whole transform with the copies of before 2026-12-04 patched back in (each batch's input
  from pageable memory, each output copied back before the next batch is queued) and with
  today's (page-locked input, outputs copied back asynchronously, one batch behind);
  the embeddings of both must be equal.

Optionally, ``--profile DIR`` writes torch.profiler tables of a 512-image transform at batch 64
with each. Usage::

    python benchmarks/gpu_parts.py [--n 2048] [--profile DIR]
"""

import argparse
import os

import numpy as np
import torch
from _common import min_cosine, photos
from gpu import eager_embed, timed

import sktransfer._inference as inference
import sktransfer.data._preprocessing as preprocessing
from sktransfer import PretrainedFeatureExtractor, load_backbone
from sktransfer.data._preprocessing import prepare_batch

# (output copy, input copy): sktransfer's now, and those of before 2026-12-04 to patch back in
NOW = (inference._to_host, preprocessing.to_device_async)
BEFORE = (lambda out: (out.float().cpu(), None), lambda images, device: images.to(device, non_blocking=True))


def use(copies):
    inference._to_host, preprocessing.to_device_async = copies


def graphed(model, batch_size):
    """The bf16 channels_last forward and pooling as a CUDA graph, replayed batch by batch."""
    static = torch.zeros(batch_size, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    amp = dict(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
    with torch.cuda.stream(side), torch.inference_mode(), torch.autocast(**amp):
        for _ in range(3):  # warm-up outside the capture, as torch.cuda.graph asks
            model.forward_features(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.autocast(**amp), torch.cuda.graph(graph):
        pooled = model.forward_features(static).mean((2, 3)).float()

    def run(x):
        outs = []
        for i in range(0, len(x), batch_size):
            static.copy_(x[i:i + batch_size])
            graph.replay()
            outs.append(pooled.clone())
        return torch.cat(outs)
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--profile", default=None, help="a folder for torch.profiler tables")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_parts.py needs a CUDA GPU")
    if args.n % 256:
        raise SystemExit("--n must be a multiple of 256 (the CUDA graph runs whole batches)")
    n, images = args.n, photos(args.n, 256)
    backbone = load_backbone("efficientnet_lite0").eval()
    model, spec = backbone.model.cuda(), backbone.preprocessing
    ready = prepare_batch(torch.from_numpy(images).permute(0, 3, 1, 2), spec, torch.device("cpu")).cuda()
    reference = eager_embed(model, ready, 256, True).cpu().numpy()
    rows = []
    for size in (64, 256):
        z, t = timed(lambda: eager_embed(model, ready, size, True), repeats=3)
        rows.append((f"eager forward, ready GPU tensors, batch {size}", t, min_cosine(z.cpu().numpy(), reference)))
    for size in (64, 256):
        run = graphed(model, size)
        z, t = timed(lambda: run(ready), repeats=3)
        rows.append((f"eager forward as a CUDA graph, ready GPU tensors, batch {size}", t,
                     min_cosine(z.cpu().numpy(), reference)))
    arrays = torch.from_numpy(images).permute(0, 3, 1, 2)
    for label, copies in (("pageable (before)", BEFORE), ("page-locked (now)", NOW)):
        use(copies)
        for size in (64, 256):
            _, t = timed(lambda: [prepare_batch(arrays[i:i + size], spec, torch.device("cuda"), True)
                                  for i in range(0, n, size)], repeats=3)
            rows.append((f"preprocessing alone, copies from {label}, batch {size}", t, float("nan")))
    embeddings = {}
    for label, copies in (("copies of before", BEFORE), ("copies of now", NOW)):
        use(copies)
        for size in (64, 256):
            ext = PretrainedFeatureExtractor(cache=False, batch_size=size).fit(images[:1])
            embeddings[label, size], t = timed(lambda: ext.transform(images), repeats=3)
            rows.append((f"sktransfer transform, {label}, batch {size}", t,
                         min_cosine(embeddings[label, size], reference)))
    use(NOW)
    print(f"{n} photographs 256x256 uint8 at 224 px; best of 3 after a warm-up call\n")
    print("| part | seconds | images/s | min cosine to the eager batch 256 |")
    print("|---|---:|---:|---:|")
    for name, t, cos in rows:
        print(f"| {name} | {t:.4f} | {n / t:.0f} | {cos:.5f} |")
    for size in (64, 256):
        same = np.array_equal(embeddings["copies of before", size], embeddings["copies of now", size])
        print(f"\nbatch {size}: embeddings with the copies of before and of now equal: {same}")
    if args.profile:
        profile(images, args.profile)


def profile(images, folder):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    os.makedirs(folder, exist_ok=True)
    for label, copies in (("before", BEFORE), ("now", NOW)):
        use(copies)
        ext = PretrainedFeatureExtractor(cache=False, batch_size=64).fit(images[:1])
        ext.transform(images[:512])
        with profiler(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            ext.transform(images[:512])
            torch.cuda.synchronize()
        with open(os.path.join(folder, f"profile_{label}.txt"), "w") as f:
            f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
            f.write("\n\n" + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
    use(NOW)


if __name__ == "__main__":
    main()
