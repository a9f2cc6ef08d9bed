"""Fine-tuning: accuracy against linear baselines, and time/accuracy side by side with skorch.

Part A (accuracy, defaults + random_state): load_digits (70/30 stratified split, image_size=64)
and a second real image set (crops of scikit-image photographs, labelled by photograph).
Part B0 (same epochs as skorch, issue 14): skorch as written by its users beside sktransfer's
defaults at 2 and 10 epochs on 600 digits.
Part B (vs skorch): the same EfficientNet-Lite0 backbone, data, epochs, batch size, optimizer
and learning rate, with a frozen backbone and with full fine-tuning. sktransfer's weight decay
acts on the new head only; with full fine-tuning skorch runs twice, with AdamW's decay on every
parameter (as its users write it) and on the head only (as sktransfer), and sktransfer also runs
its own recipe (its defaults: cosine schedule, solved head, augmentation) on the same whole network.
Part C (partial freezing): the first k stages frozen, no augmentation: sktransfer computing
the frozen prefix once, sktransfer running it every step, and skorch with a Freezer. Usage::

    python benchmarks/finetune.py [--epochs 3] [--skip-accuracy] [--skip-equal-epochs] [--skip-skorch]
        [--skip-prefix] [--seeds 1] [--first-seed 0] [--skip-frozen] [--runs skorch,sktransfer,...]

``--seeds N`` repeats part B's fits with seeds ``--first-seed`` .. ``--first-seed`` + N - 1
(skorch: ``torch.manual_seed``, sktransfer: ``random_state``) and reports the mean: the two
libraries draw their head initialisation and shuffling from different streams, so one seed
compares luck as well. ``--skip-frozen`` runs part B's full fine-tuning only, ``--runs`` a subset
of its runs.
"""

import argparse
import time

import numpy as np
import torch
from _common import machine
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor, load_backbone
from sktransfer.data._preprocessing import prepare_batch


def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)


def photo_crops(per_class=60, size=48, seed=0):
    """Random crops of 8 scikit-image photographs; the label is the photograph."""
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry", "coins"]
    rng = np.random.default_rng(seed)
    X, y = [], []
    for label, name in enumerate(names):
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        for _ in range(per_class):
            r = rng.integers(0, img.shape[0] - size)
            c = rng.integers(0, img.shape[1] - size)
            X.append(img[r:r + size, c:c + size])
            y.append(label)
    return train_test_split(np.stack(X), np.array(y), test_size=0.3, stratify=y, random_state=0)


# parts B and C train the very network skorch trains: the whole backbone, a random head,
# exactly the given epochs, BatchNorm in PyTorch's train mode
SAME_NETWORK = dict(layer=None, head_init="random", min_steps=0, bn_stats="update")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def accuracy_table(name, split, image_size):
    Xtr, Xte, ytr, yte = split
    rows = []
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    raw = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    (_, t) = timed(lambda: raw.fit(flat(Xtr), ytr))
    rows.append(("LogisticRegression on raw pixels", raw.score(flat(Xte), yte), t))
    emb = make_pipeline(PretrainedFeatureExtractor(image_size=image_size), StandardScaler(),
                        LogisticRegression(max_iter=5000))
    (_, t) = timed(lambda: emb.fit(Xtr, ytr))
    rows.append(("LogisticRegression on frozen embeddings (default layer)", emb.score(Xte, yte), t))
    ft = FineTuneClassifier(image_size=image_size, random_state=0)
    (_, t) = timed(lambda: ft.fit(Xtr, ytr))
    rows.append(("FineTuneClassifier (defaults)", ft.score(Xte, yte), t))
    print(f"\n{name}: {len(Xtr)} train / {len(Xte)} test images, image_size={image_size}\n")
    print("| model | test accuracy | fit seconds |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]:.4f} | {row[2]:.1f} |")


class LiteNet(torch.nn.Module):
    """Lite0 backbone + average pooling + linear head: the network both libraries train."""

    def __init__(self, n_classes):
        super().__init__()
        self.backbone = load_backbone("efficientnet_lite0").model
        self.head = torch.nn.Linear(1280, n_classes)

    def forward(self, x):
        return self.head(self.backbone.forward_features(x).mean((2, 3)))


PART_B_RUNS = ("skorch", "skorch-head-decay", "sktransfer", "sktransfer-recipe")


def skorch_side_by_side(epochs, batch_size=32, lr=1e-3, image_size=64, seeds=1, first_seed=0, frozen_too=True,
                        runs=PART_B_RUNS):
    """``runs``, with full fine-tuning: skorch as its users write it (AdamW's decay on every
    parameter), skorch with decay on the head only, sktransfer with skorch's recipe (decay on the
    head only, its design: the backbone's regulariser is ``reg_lambda``), and sktransfer's own
    recipe on the same whole network (``layer=None``, every other parameter at its default)."""
    from skorch import NeuralNetClassifier
    from skorch.callbacks import Freezer

    Xtr, Xte, ytr, yte = digits()
    spec = load_backbone("efficientnet_lite0", weights=None).preprocessing.replace(image_size=image_size)

    def ready(X):  # skorch needs ready tensors: the same preprocessing sktransfer applies
        x = torch.tensor(X.reshape(-1, 1, 8, 8) / 16.0, dtype=torch.float32)
        return prepare_batch(x, spec, torch.device("cpu")).numpy()

    def skorch_run(seed, frozen, options):
        torch.manual_seed(seed)
        callbacks = [Freezer(lambda name: name.startswith("backbone."))] if frozen else []
        net = NeuralNetClassifier(
            LiteNet, module__n_classes=10, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.AdamW,
            lr=lr, max_epochs=epochs, batch_size=batch_size, train_split=None, callbacks=callbacks,
            iterator_train__shuffle=True, verbose=0, **options,
        )
        (_, t) = timed(lambda: net.fit(ready(Xtr), ytr.astype(np.int64)))  # preparing tensors is part of its fit
        return float((net.predict(ready(Xte)) == yte).mean()), t

    def sktransfer_run(**params):
        ours = FineTuneClassifier(max_epochs=epochs, image_size=image_size, **params)
        (_, t) = timed(lambda: ours.fit(Xtr, ytr))
        return ours.score(Xte, yte), t

    same_recipe = dict(batch_size=batch_size, lr=lr, backbone_lr_scale=1.0, lr_schedule="constant", augment=False,
                       dropout=0.0, weight_decay=0.01, **SAME_NETWORK)
    candidates = {  # name: (label, runs with a frozen backbone too, fit(seed, frozen) -> (accuracy, seconds))
        "skorch": ("skorch NeuralNetClassifier", True, lambda seed, frozen: skorch_run(seed, frozen, {})),
        "skorch-head-decay": (
            "skorch NeuralNetClassifier, weight decay on the head only (as sktransfer)", False,
            lambda seed, frozen: skorch_run(
                seed, frozen, {"optimizer__param_groups": [("backbone.*", {"weight_decay": 0.0})]})),
        "sktransfer": ("sktransfer FineTuneClassifier", True, lambda seed, frozen: sktransfer_run(
            freeze_depth="all" if frozen else 0, random_state=seed, **same_recipe)),
        "sktransfer-recipe": (
            "sktransfer FineTuneClassifier, its own defaults on the whole network (layer=None)", False,
            lambda seed, frozen: sktransfer_run(layer=None, random_state=seed)),
    }
    rows, scores = [], {}
    modes = ("frozen backbone (head only)", "full fine-tuning") if frozen_too else ("full fine-tuning",)
    for mode, seed in [(m, s) for m in modes for s in range(first_seed, first_seed + seeds)]:
        frozen = mode.startswith("frozen")
        at = f", seed {seed}" if seeds > 1 else ""
        for name in runs:
            label, with_frozen, fit = candidates[name]
            if frozen and not with_frozen:
                continue
            acc, t = fit(seed, frozen)
            rows.append((f"{label}, {mode}{at}", acc, t))
            scores.setdefault((label, mode), []).append((acc, t))
    print(f"\nSide by side with skorch: digits 70/30, image_size={image_size}, {epochs} epochs, batch {batch_size}, "
          f"AdamW lr={lr} (weight decay 0.01 = AdamW default), constant lr, no augmentation (sktransfer's own "
          "recipe: its defaults)\n")
    print("| run | test accuracy | fit seconds |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]:.4f} | {row[2]:.1f} |")
    if seeds > 1:
        print(f"\nOver the {seeds} seeds {first_seed}-{first_seed + seeds - 1} "
              "(skorch: torch.manual_seed(s); sktransfer: random_state=s)\n")
        print("| run | mean test accuracy | min - max | mean fit seconds |")
        print("|---|---:|---:|---:|")
        for (who, mode), fits in scores.items():
            accs, times = [a for a, _ in fits], [t for _, t in fits]
            print(f"| {who}, {mode} | {np.mean(accs):.4f} | {min(accs):.4f} - {max(accs):.4f} | "
                  f"{np.mean(times):.1f} |")


def skorch_equal_epochs(epoch_counts=(2, 10), n_train=600, image_size=64, batch_size=32):
    """Issue 14's comparison: skorch as its users write it (Adam lr 1e-3, constant) beside
    sktransfer's defaults, at the same epochs (``min_steps=0``), on the same 600 digits."""
    from skorch import NeuralNetClassifier

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=n_train, stratify=y, random_state=0)
    spec = load_backbone("efficientnet_lite0", weights=None).preprocessing.replace(image_size=image_size)
    ready = lambda X: prepare_batch(  # noqa: E731
        torch.tensor(X.reshape(-1, 1, 8, 8) / 16.0, dtype=torch.float32), spec, torch.device("cpu")).numpy()
    rows = []
    for epochs in epoch_counts:
        torch.manual_seed(0)
        net = NeuralNetClassifier(
            LiteNet, module__n_classes=10, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam,
            lr=1e-3, max_epochs=epochs, batch_size=batch_size, train_split=None, iterator_train__shuffle=True,
            verbose=0,
        )
        (_, t) = timed(lambda: net.fit(ready(Xtr), ytr.astype(np.int64)))
        rows.append((f"skorch, Adam lr 1e-3 constant, whole Lite0, {epochs} epochs",
                     float((net.predict(ready(Xte)) == yte).mean()), t))
        ours = FineTuneClassifier(image_size=image_size, max_epochs=epochs, min_steps=0, random_state=0)
        (_, t) = timed(lambda: ours.fit(Xtr, ytr))
        rows.append((f"sktransfer defaults (layer_={ours.layer_}), {epochs} epochs, min_steps=0",
                     ours.score(Xte, yte), t))
    print(f"\nSame epochs as skorch: {n_train} digits (stratified), {len(yte)} test, image_size={image_size}, "
          f"batch {batch_size}\n")
    print("| run | test accuracy | fit seconds |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]:.4f} | {row[2]:.1f} |")


def prefix_side_by_side(epochs, depths=(3, 5), batch_size=32, lr=1e-3, image_size=64):
    from skorch import NeuralNetClassifier
    from skorch.callbacks import Freezer

    Xtr, Xte, ytr, yte = digits()
    backbone = load_backbone("efficientnet_lite0", weights=None)
    spec = backbone.preprocessing.replace(image_size=image_size)
    ready = lambda X: prepare_batch(  # noqa: E731
        torch.tensor(X.reshape(-1, 1, 8, 8) / 16.0, dtype=torch.float32), spec, torch.device("cpu")).numpy()
    rows = []
    for k in depths:
        frozen = {"backbone." + p for _, params in backbone.stages[:k] for p in params}
        kw = dict(freeze_depth=k, max_epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule="constant",
                  dropout=0.0, weight_decay=0.01, image_size=image_size, random_state=0, **SAME_NETWORK)
        for label, augment in (("frozen prefix computed once", False),
                               ("frozen stages run every step", lambda batch: batch)):
            ours = FineTuneClassifier(augment=augment, **kw)
            (_, t) = timed(lambda: ours.fit(Xtr, ytr))
            rows.append((f"sktransfer, freeze_depth={k}, {label}", ours.score(Xte, yte), t))
        torch.manual_seed(0)
        net = NeuralNetClassifier(
            LiteNet, module__n_classes=10, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.AdamW,
            lr=lr, max_epochs=epochs, batch_size=batch_size, train_split=None, verbose=0,
            callbacks=[Freezer(lambda name, frozen=frozen: name in frozen)], iterator_train__shuffle=True,
        )
        (_, t) = timed(lambda: net.fit(ready(Xtr), ytr.astype(np.int64)))
        rows.append((f"skorch, Freezer on the same {k} stages", float((net.predict(ready(Xte)) == yte).mean()), t))
    print(f"\nPartial freezing: digits 70/30, image_size={image_size}, {epochs} epochs, batch {batch_size}, "
          f"AdamW lr={lr}, constant lr, no augmentation\n")
    print("| run | test accuracy | fit seconds |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]:.4f} | {row[2]:.1f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-skorch", action="store_true")
    parser.add_argument("--skip-prefix", action="store_true")
    parser.add_argument("--skip-equal-epochs", action="store_true")
    parser.add_argument("--seeds", type=int, default=1,
                        help="part B: run each fit with N seeds from --first-seed and report their mean")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--skip-frozen", action="store_true", help="part B: full fine-tuning only")
    parser.add_argument("--runs", default=",".join(PART_B_RUNS),
                        help=f"part B: a comma-separated subset of {','.join(PART_B_RUNS)}")
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    if not args.skip_accuracy:
        accuracy_table("load_digits", digits(), 64)
        accuracy_table("scikit-image photograph crops (8 classes)", photo_crops(), 64)
    if not args.skip_equal_epochs:
        skorch_equal_epochs()
    if not args.skip_skorch:
        skorch_side_by_side(args.epochs, seeds=args.seeds, first_seed=args.first_seed,
                            frozen_too=not args.skip_frozen, runs=args.runs.split(","))
    if not args.skip_prefix:
        prefix_side_by_side(args.epochs)


if __name__ == "__main__":
    main()
