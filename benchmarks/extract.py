"""Extraction throughput on the whole path: sktransfer vs the eager model on ready tensors vs embetter.

Same backbone (EfficientNet-Lite0, embedded ImageNet weights), same images (real
photographs at 256x256, embedded at 224 px), one run. sktransfer is timed from the
user's uint8 arrays, JPEG files and PIL images, fit and first transform included (for
the process's first extractor of a setting, which traces the network, and for a later one,
which reuses that trace);
the eager forward gets tensors already resized and normalised. The eager rows and embetter
run first, with the C library's allocator as the process starts; sktransfer's calls keep freed
memory in the process (``sktransfer._allocator``), and a last row shows the eager forward
with that setting. Usage::

    python benchmarks/extract.py [--n 192] [--size 256]
"""

import argparse
import contextlib
import os
import tempfile
import time

import torch
from _common import best_of, machine, min_cosine, photos
from PIL import Image

from sktransfer import PretrainedFeatureExtractor, load_backbone
from sktransfer._allocator import keep_freed_memory
from sktransfer.backbones import _loading
from sktransfer.data._preprocessing import prepare_batch


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
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--size", type=int, default=256, help="side of the user's images (resized to 224)")
    args = parser.parse_args()
    images = photos(args.n, args.size)
    rows = []
    backbone = load_backbone("efficientnet_lite0").eval()
    model = backbone.model
    spec = backbone.preprocessing
    # the eager baseline gets ready tensors: resized to 224 and normalised beforehand, untimed
    ready = prepare_batch(torch.from_numpy(images).permute(0, 3, 1, 2), spec, torch.device("cpu"))
    eager_best = None
    for channels_last in (False, True):
        for bs in (8, 16, 32, 64):
            t = best_of(lambda: eager(model, ready, bs, channels_last), repeats=2)
            rows.append((f"eager forward, ready 224 px tensors, batch {bs}, "
                         f"{'channels_last' if channels_last else 'NCHW'}", t, None))
            eager_best = min(eager_best or t, t)
    reference = eager(model, ready, 64, False).numpy()
    pil = [Image.fromarray(img) for img in images]
    # embetter before sktransfer: sktransfer's allocator settings outlive its calls (_allocator.py)
    emb = None
    try:
        from embetter.vision import TimmEncoder

        with embetter_on_lite0(model):
            enc = TimmEncoder("efficientnet_lite0")
        t = best_of(lambda: enc.transform(pil), repeats=1)
        rows.append((f"embetter TimmEncoder.transform, PIL images {args.size} px "
                     f"(model.training={enc.model.training})", t, None))
        emb = t
    except ImportError:
        rows.append(("embetter not installed (pip install -e '.[bench]')", float("nan"), None))
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for i, img in enumerate(images):
            files.append(os.path.join(folder, f"{i}.jpg"))
            Image.fromarray(img).save(files[-1], quality=95)
        inputs = {"uint8 arrays": images, "JPEG files": files, "PIL images": pil}
        cosines = {}
        for what, X in inputs.items():
            for optimize in (True, False):
                # a process that has built the network (untimed, as the eager model's build) but
                # derived nothing from it yet: the first extractor works out its layers and traces
                _loading._BUILT.clear()
                load_backbone("efficientnet_lite0")
                label = "optimize=True (traced, frozen, oneDNN fusion)" if optimize else "optimize=False (eager)"
                # the whole path a user runs: fit, then the first transform (which builds the
                # traced module when optimize=True), then later transforms of the fitted extractor
                Z, first = _fit_and_first_transform(X, optimize)
                rows.append((f"sktransfer fit + first transform, the process's first extractor, {label}, "
                             f"{what} {args.size} px", first, None))
                if optimize:  # a grid search's later fits: the process traced this setting already
                    _, again = _fit_and_first_transform(X, optimize)
                    rows.append((f"sktransfer fit + first transform, a later new extractor, {label}, "
                                 f"{what} {args.size} px", again, None))
                ext = PretrainedFeatureExtractor(optimize=optimize, cache=False).fit(X[:1])
                later = best_of(lambda: ext.transform(X), repeats=2)
                rows.append((f"sktransfer later transforms, {label}, {what} {args.size} px", later, None))
                cosines[(what, optimize)] = min_cosine(Z, reference)
    # the eager forward with sktransfer's allocator setting (not a baseline: shows what that setting gives)
    with keep_freed_memory():
        t = best_of(lambda: eager(model, ready, 8, True), repeats=2)
    rows.append(("eager forward, ready 224 px tensors, batch 8, channels_last, freed memory kept "
                 "as inside sktransfer (not a baseline)", t, None))
    print(f"Machine: {machine()}")
    print(f"Images: {args.n} photographs, {args.size}x{args.size} uint8, embedded at 224 px by "
          "EfficientNet-Lite0 (embedded ImageNet weights)\n")
    print("| path | seconds | images/s | vs best eager forward | vs embetter |")
    print("|---|---:|---:|---:|---:|")
    for name, t, _ in rows:
        vs_emb = f"{emb / t:.2f}x" if emb else "-"
        print(f"| {name} | {t:.2f} | {args.n / t:.1f} | {eager_best / t:.2f}x | {vs_emb} |")
    print("\nmin cosine of sktransfer's embeddings to the eager forward's on the same resized images:")
    for (what, optimize), cos in cosines.items():
        print(f"  {what}, optimize={optimize}: {cos:.6f}")


def _fit_and_first_transform(X, optimize):
    start = time.perf_counter()
    Z = PretrainedFeatureExtractor(optimize=optimize, cache=False).fit(X[:1]).transform(X)
    return Z, time.perf_counter() - start


if __name__ == "__main__":
    main()
