"""On a CUDA GPU: extraction and fine-tuning throughput beside the raw model and skorch.

Same backbone (EfficientNet-Lite0, embedded ImageNet weights), same images, one run.

Part 1, extraction at 224 px: the eager forward on tensors already resized, normalised and on
the GPU (float32 NCHW, and bf16 autocast with channels_last), beside
``PretrainedFeatureExtractor.transform`` from the user's uint8 arrays on the CPU (its whole
path: resizing, copy to the GPU, forward, pooling, copy back), at its default ``batch_size``
and at 64 (its GPU default until 2026-12-04), with the eager forward at 64 too.

Part 2, fine-tuning the whole network: a hand-written loop (AdamW, bf16 autocast,
channels_last, tensors ready on the GPU), skorch's ``NeuralNetClassifier(device="cuda")`` on
ready CPU tensors (float32, as its users write it), and ``FineTuneClassifier`` from uint8
arrays with the same recipe (same network and head, epochs, batch, optimizer, constant
learning rate, no augmentation), then with its own defaults. Usage::

    python benchmarks/gpu.py [--n 2048] [--batch-size 256] [--epochs 3] [--train-batch-size 64]
"""

import argparse
import time

import numpy as np
import torch
from _common import machine, min_cosine, photos
from finetune import SAME_NETWORK, LiteNet, photo_crops

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor, load_backbone
from sktransfer.data._preprocessing import prepare_batch


def timed(fn, repeats=2):
    """Best wall time of ``repeats`` calls after a warm-up call (none with ``repeats=0``: one
    timed call, the first), the GPU synchronised."""
    if repeats:
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return out, min(times)


def eager_embed(model, x, batch_size, bf16):
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.cat([model.forward_features(x[i:i + batch_size]).mean((2, 3)).float()
                          for i in range(0, len(x), batch_size)])


def extraction(n, batch_size):
    images = photos(n, 256)
    backbone = load_backbone("efficientnet_lite0").eval()
    model, spec = backbone.model.cuda(), backbone.preprocessing
    ready = prepare_batch(torch.from_numpy(images).permute(0, 3, 1, 2), spec, torch.device("cpu")).cuda()
    reference, t32 = timed(lambda: eager_embed(model, ready, batch_size, False))
    rows = [(f"eager forward, float32 NCHW, ready GPU tensors, batch {batch_size}", t32, 1.0)]
    for size in dict.fromkeys((batch_size, 64)):  # 64: the GPU default until 2026-12-04
        z, t = timed(lambda: eager_embed(model, ready, size, True))
        rows.append((f"eager forward, bf16 autocast + channels_last, ready GPU tensors, batch {size}", t,
                     min_cosine(z.cpu().numpy(), reference.cpu().numpy())))
    reference = reference.cpu().numpy()
    ext = PretrainedFeatureExtractor(cache=False)
    Z, t = timed(lambda: ext.fit(images[:1]).transform(images), repeats=0)
    rows.append(("sktransfer fit + first transform, uint8 arrays 256 px on the CPU", t, min_cosine(Z, reference)))
    for size in ("auto", 64):  # "auto": 256 at 224 px on a GPU
        ext.set_params(batch_size=size)
        Z, t = timed(lambda: ext.transform(images))
        rows.append((f"sktransfer later transforms, uint8 arrays 256 px on the CPU, batch_size={size!r}", t,
                     min_cosine(Z, reference)))
    print(f"\nPart 1, extraction: {n} photographs 256x256 uint8, embedded at 224 px (1280 features)\n")
    print("| path | seconds | images/s | vs eager bf16 | min cosine to eager float32 |")
    print("|---|---:|---:|---:|---:|")
    for name, t, cos in rows:
        print(f"| {name} | {t:.3f} | {n / t:.0f} | {rows[1][1] / t:.2f}x | {cos:.5f} |")


def hand_loop(X, y, epochs, batch_size, lr, seed):
    torch.manual_seed(seed)
    net = LiteNet(int(y.max()) + 1).cuda().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    x_all, y_all = X.cuda(), torch.as_tensor(y).cuda()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_all), device="cuda").split(batch_size):
            with torch.autocast("cuda", torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(net(x_all[idx].contiguous(memory_format=torch.channels_last)),
                                                         y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


def ready_tensors(image_size):
    """``X`` (uint8 NHWC) -> Lite0's normalised float32 input at ``image_size``, on the CPU."""
    spec = load_backbone("efficientnet_lite0", weights=None).preprocessing.replace(image_size=image_size)
    return lambda X: prepare_batch(torch.from_numpy(X).permute(0, 3, 1, 2), spec, torch.device("cpu"))


def hand_accuracy(Xtr, ytr, Xte, yte, ready, epochs, batch_size, lr):
    """The hand-written loop's fit on ``ready(Xtr)`` and its bf16 test accuracy."""
    net = hand_loop(ready(Xtr), ytr, epochs, batch_size, lr, 0)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        pred = net(ready(Xte).cuda().contiguous(memory_format=torch.channels_last)).argmax(1).cpu().numpy()
    return float((pred == yte).mean())


def fine_tuning(epochs, batch_size, lr=1e-3, image_size=224):
    """Part 2's table; each fit once after a warm-up fit (CUDA's kernels chosen and loaded)."""
    Xtr, Xte, ytr, yte = photo_crops(per_class=160, size=64)
    ready = ready_tensors(image_size)
    rows = []
    acc, t = timed(lambda: hand_accuracy(Xtr, ytr, Xte, yte, ready, epochs, batch_size, lr), repeats=1)
    rows.append(("hand-written loop: AdamW, bf16 autocast, channels_last, ready GPU tensors", acc, t))
    try:
        from skorch import NeuralNetClassifier

        def skorch_fit():
            torch.manual_seed(0)
            net = NeuralNetClassifier(
                LiteNet, module__n_classes=int(ytr.max()) + 1, criterion=torch.nn.CrossEntropyLoss,
                optimizer=torch.optim.AdamW, lr=lr, max_epochs=epochs, batch_size=batch_size, train_split=None,
                iterator_train__shuffle=True, verbose=0, device="cuda",
            )
            net.fit(ready(Xtr).numpy(), ytr.astype(np.int64))  # its users prepare the tensors: timed with the fit
            return float((net.predict(ready(Xte).numpy()) == yte).mean())

        acc, t = timed(skorch_fit, repeats=1)
        rows.append(("skorch NeuralNetClassifier(device='cuda'), float32, ready CPU tensors", acc, t))
    except ImportError:
        rows.append(("skorch not installed (pip install -e '.[bench]')", float("nan"), float("nan")))
    same = dict(SAME_NETWORK, batch_size=batch_size, lr=lr, backbone_lr_scale=1.0, lr_schedule="constant",
                augment=False, dropout=0.0, weight_decay=0.01, mixup=0.0, probe_ensemble=False)
    for label, params in (("the same recipe", same), ("its own defaults", {})):
        def ours():
            clf = FineTuneClassifier(max_epochs=epochs, image_size=image_size, random_state=0, **params)
            return clf.fit(Xtr, ytr).score(Xte, yte)

        acc, t = timed(ours, repeats=1)
        rows.append((f"sktransfer FineTuneClassifier, {label}, uint8 arrays", acc, t))
    print(f"\nPart 2, fine-tuning the whole Lite0: {len(Xtr)} crops of 8 photographs (64 px, labelled by "
          f"photograph) at {image_size} px, {len(Xte)} test crops, {epochs} epochs, batch {batch_size}, "
          f"AdamW lr {lr}\n")
    print("| run | test accuracy | fit + predict seconds |")
    print("|---|---:|---:|")
    for name, acc, t in rows:
        print(f"| {name} | {acc:.4f} | {t:.2f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256, help="the eager forward's batch in part 1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-batch-size", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    print(f"Machine: {machine()}")
    extraction(args.n, args.batch_size)
    fine_tuning(args.epochs, args.train_batch_size)


if __name__ == "__main__":
    main()
