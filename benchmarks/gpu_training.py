"""On a CUDA GPU: where ``FineTuneClassifier`` keeps its prepared training data, and what it costs.

Same data and recipe as ``gpu.py``'s part 2 (896 crops of 8 photographs, 64 px, labelled by
photograph, fine-tuned at 224 px, 3 epochs, batch 64, AdamW, constant learning rate, no
augmentation), once training the whole network and once with four stages frozen (their output
is then computed once and only the rest trains on it). The prepared images (and the frozen
stages' output) wait between batches:

* on the CPU (resized there), each batch gathered and copied from pageable memory (until
  2026-12-04);
* on the CPU (resized there), each batch gathered and copied through page-locked memory (now
  where they do not fit on the GPU, but resized on the GPU);
* on the GPU, where they fit in a tenth of its free memory (now): the arrays are resized there
  once, and batches are indexed there.

Each fit is timed three times after a warm-up fit (the best is shown, and the least seconds of
the epochs alone, from ``history_``), beside the hand-written loop of ``gpu.py`` (ready GPU
tensors). Then ``predict`` of 2048 photographs on the GPU in batches of the classifier's
``batch_size`` of 64 (until 2026-12-04) and in the larger ones of now. Optionally, ``--profile
FILE`` writes torch.profiler tables of one fit (data on the GPU, whole network). Usage::

    python benchmarks/gpu_training.py [--epochs 3] [--profile FILE]
"""

import argparse

import torch
from _common import machine, photos
from finetune import SAME_NETWORK, photo_crops
from gpu import hand_accuracy, ready_tensors, timed

import sktransfer._inference as inference
import sktransfer.data._batches as batches
from sktransfer import FineTuneClassifier


def pageable(x, device, channels_last=False):
    """``to_device`` as it was until 2026-12-04: a copy from the gathered (pageable) batch."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


PREPARED_BATCHES = batches.prepared_batches


def resized_on_the_cpu(source, spec, batch_size, device, channels_last=False, num_workers=0):
    """``PreparedImages``'s batches as until 2026-12-04: arrays resized on the CPU too."""
    return PREPARED_BATCHES(source, spec, 256, torch.device("cpu"), channels_last, num_workers)


PLACES = {  # (GPU_RESIDENT_FRACTION, to_device, PreparedImages' prepared_batches)
    "CPU, pageable copies (before)": (0.0, pageable, resized_on_the_cpu),
    "CPU, page-locked copies": (0.0, batches.to_device, resized_on_the_cpu),
    "GPU-resident (now)": (batches.GPU_RESIDENT_FRACTION, batches.to_device, PREPARED_BATCHES),
}


def place(name):
    batches.GPU_RESIDENT_FRACTION, batches.to_device, batches.prepared_batches = PLACES[name]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--profile", default=None, help="a file for a torch.profiler table of one fit")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_training.py needs a CUDA GPU")
    print(f"Machine: {machine()}\n")
    Xtr, Xte, ytr, yte = photo_crops(per_class=160, size=64)
    recipe = dict(SAME_NETWORK, max_epochs=args.epochs, image_size=224, batch_size=64, lr=1e-3,
                  backbone_lr_scale=1.0, lr_schedule="constant", augment=False, dropout=0.0, weight_decay=0.01,
                  mixup=0.0, probe_ensemble=False, random_state=0)
    ready = ready_tensors(224)
    acc, t = timed(lambda: hand_accuracy(Xtr, ytr, Xte, yte, ready, args.epochs, 64, 1e-3), repeats=3)
    rows = [("hand-written loop, ready GPU tensors", "-", acc, t, float("nan"))]
    for depth in (0, 4):
        for name in PLACES:
            place(name)

            epochs = []

            def fit():
                clf = FineTuneClassifier(freeze_depth=depth, **recipe).fit(Xtr, ytr)
                epochs.append(sum(h["seconds"] for h in clf.history_))
                return clf.score(Xte, yte)

            acc, t = timed(fit, repeats=3)
            rows.append((f"sktransfer, data {name}", depth, acc, t, min(epochs[1:])))
    place("GPU-resident (now)")
    print(f"{len(Xtr)} crops at 224 px, {args.epochs} epochs, batch 64; fit + predict of {len(Xte)} "
          "test crops, best of 3 after a warm-up\n")
    print("| run | freeze_depth | test accuracy | seconds | of which epochs |")
    print("|---|---:|---:|---:|---:|")
    for name, depth, acc, t, epochs in rows:
        print(f"| {name} | {depth} | {acc:.4f} | {t:.2f} | {epochs:.2f} |")
    images = photos(2048, 256)
    clf = FineTuneClassifier(**dict(recipe, max_epochs=1)).fit(Xtr, ytr)
    print("\n| predict, 2048 photographs 256 px | seconds | images/s |")
    print("|---|---:|---:|")
    for label, rule in (("batches of batch_size=64 (until 2026-12-04)", lambda *args: 0),
                        ("batches of 256 (now)", inference.gpu_batch_size)):
        inference.gpu_batch_size = rule
        _, t = timed(lambda: clf.predict(images), repeats=3)
        print(f"| {label} | {t:.3f} | {2048 / t:.0f} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            FineTuneClassifier(**recipe).fit(Xtr, ytr)
            torch.cuda.synchronize()
        with open(args.profile, "w") as f:
            f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
            f.write("\n\n" + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))


if __name__ == "__main__":
    main()
