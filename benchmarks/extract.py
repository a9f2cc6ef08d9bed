"""Extraction throughput: sktransfer vs the eager model on ready tensors vs embetter.

Same backbone (EfficientNet-Lite0, embedded ImageNet weights), same images
(real photographs at 224x224), one run. Usage::

    python benchmarks/extract.py [--n 128]
"""

import argparse
import contextlib
import time

import numpy as np
import torch
from _common import best_of, machine, photos

from sktransfer import PretrainedFeatureExtractor, load_backbone


def eager(model, x, batch_size, channels_last):
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return torch.cat([model.forward_features(x[i:i + batch_size]).mean((2, 3)) for i in range(0, len(x), batch_size)])


@contextlib.contextmanager
def embetter_on_lite0(model):
    """embetter's TimmEncoder calls timm.create_model(pretrained=True), which needs network;
    hand it the same embedded Lite0 instead (its own code path otherwise)."""
    import copy

    import embetter.vision._torchvis as et

    original = et.timm.create_model

    def create_model(name, pretrained=True, num_classes=None, **kwargs):
        m = copy.deepcopy(model)
        if num_classes == 0:
            m.reset_classifier(0)
        return m

    et.timm.create_model = create_model
    try:
        yield
    finally:
        et.timm.create_model = original


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=128)
    args = parser.parse_args()
    images = photos(args.n)
    rows = []
    backbone = load_backbone("efficientnet_lite0").eval()
    model = backbone.model
    spec = backbone.preprocessing
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    ready = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    ready = ready.contiguous()
    eager_best = None
    for channels_last in (False, True):
        for bs in (32, 64):
            t = best_of(lambda: eager(model, ready, bs, channels_last))
            rows.append((f"eager forward, ready tensors, batch {bs}, {'channels_last' if channels_last else 'NCHW'}", t))
            eager_best = min(eager_best or t, t)
    eager_ext = PretrainedFeatureExtractor(optimize=False, cache=False).fit(images[:1])
    t = best_of(lambda: eager_ext.transform(images))
    rows.append(("sktransfer transform, optimize=False (uint8 NHWC in)", t))
    ext = PretrainedFeatureExtractor(optimize=True, cache=False).fit(images[:1])
    start = time.perf_counter()
    ext.transform(images[:1])  # builds the traced module once
    build = time.perf_counter() - start
    t = best_of(lambda: ext.transform(images))
    rows.append(("sktransfer transform, optimize=True (traced, frozen; uint8 NHWC in)", t))
    ours = t
    Z = ext.transform(images)
    reference = eager(model, ready, 64, False).numpy()
    cos = (Z * reference).sum(1) / np.linalg.norm(Z, axis=1) / np.linalg.norm(reference, axis=1)
    emb = None
    try:
        from embetter.vision import TimmEncoder
        from PIL import Image

        pil = [Image.fromarray(img) for img in images]
        with embetter_on_lite0(model):
            enc = TimmEncoder("efficientnet_lite0")
        t = best_of(lambda: enc.transform(pil), repeats=1)
        rows.append((f"embetter TimmEncoder.transform (PIL in; model.training={enc.model.training})", t))
        emb = t
    except ImportError:
        rows.append(("embetter not installed (pip install -e '.[bench]')", float("nan")))
    print(f"Machine: {machine()}")
    print(f"Images: {args.n} photographs, 224x224, EfficientNet-Lite0 (embedded ImageNet weights)\n")
    print("| path | seconds | images/s | vs best eager |")
    print("|---|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {args.n / t:.1f} | {eager_best / t:.2f}x |")
    print(f"\nsktransfer (optimize=True) vs eager embeddings: min cosine {cos.min():.6f}")
    print(f"one-time build of the optimized module: {build:.1f} s")
    if emb:
        print(f"sktransfer speed-up over embetter: {emb / ours:.1f}x")


if __name__ == "__main__":
    main()
