"""Unlabelled target images: each adaptation method against source-only and a target-supervised ceiling.

Source: labelled clean digits (scikit-learn's 8x8 digits). Target: other digits under a
shift, given without labels; scored on held-out shifted digits (target accuracy) and on
held-out clean digits (source accuracy). Shifts: contrast inversion, blur + noise, noise,
rotation by 40 degrees. For each shift, ``FineTuneClassifier(image_size=32, random_state=seed,
missing_label=-1, adaptation=...)`` with ``adaptation`` None (source-only), "adabn",
"coral", "dann", "pseudo_label", "info_max", each the mean over ``--seeds`` random
states; the ceiling is the same estimator trained on the target images with their labels. skada's deep DANN on the same backbone runs beside them when
skada is installed (``--skada``). A second table gives, for reference, scikit-learn's
LogisticRegression on the raw 8x8 pixels, trained on the labelled source digits and on the
target digits with their labels. Usage::

    python benchmarks/domain_adaptation.py [--size 32] [--n-source 300] [--n-target 300]
        [--seeds 3] [--figure docs/figures/domain_adaptation.png] [--skada]
"""

import argparse
import time

import numpy as np
from _common import machine
from scipy.ndimage import gaussian_filter, rotate
from sklearn.datasets import load_digits

from sktransfer import FineTuneClassifier

METHODS = [None, "adabn", "coral", "dann", "pseudo_label", "info_max"]


def shifts():
    noise = np.random.RandomState(1)
    return {
        "contrast inversion": lambda a: 1.0 - a,
        "blur + noise": lambda a: np.clip(
            np.stack([gaussian_filter(im, 1.0) for im in a]) + noise.normal(0, 0.25, a.shape), 0, 1),
        "noise": lambda a: np.clip(a + noise.normal(0, 0.25, a.shape), 0, 1),
        "rotation 40 deg": lambda a: np.clip(np.stack([rotate(im, 40, reshape=False, order=1) for im in a]), 0, 1),
    }


def measured(fit, X_target_test, X_source_test, y_test, seeds):
    """Mean target accuracy, source accuracy and fit seconds of ``fit(seed)`` over the seeds."""
    rows = []
    for seed in seeds:
        start = time.perf_counter()
        model = fit(seed)
        seconds = time.perf_counter() - start
        rows.append((model.score(X_target_test, y_test), model.score(X_source_test, y_test), seconds))
    return tuple(np.mean(rows, axis=0))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n-source", type=int, default=300)
    parser.add_argument("--n-target", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=3, help="random_state 0..seeds-1, means reported")
    parser.add_argument("--figure", default=None)
    parser.add_argument("--skada", action="store_true")
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 8, 8) / 16.0
    order = np.random.RandomState(0).permutation(len(X))
    src = order[:args.n_source]
    tgt = order[args.n_source:args.n_source + args.n_target]
    test = order[args.n_source + args.n_target:][:args.n_test]
    seeds = range(args.seeds)
    columns = ["source-only"] + [m for m in METHODS if m] + (["skada DANN"] if args.skada else []) \
        + ["target labels (ceiling)"]
    print(f"{args.n_source} labelled source digits, {args.n_target} unlabelled target digits, "
          f"{len(test)} test digits of each domain, {args.size} px. Cells: target accuracy / source accuracy "
          f"(fit s), means over random_state 0-{args.seeds - 1} (skada DANN: seed 0).\n")
    print("| shift | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    results, gains, pixels = {}, [], []
    for name, shift in shifts().items():
        Xt, Xte = shift(X[tgt]), shift(X[test])
        X_fit = np.concatenate([X[src], Xt])
        y_fit = np.concatenate([y[src], -np.ones(len(tgt), int)])
        cells, results[name], scores = [], {}, {}
        for method in METHODS:
            def fit(seed, method=method):
                return FineTuneClassifier(image_size=args.size, random_state=seed, missing_label=-1,
                                          adaptation=method).fit(X_fit, y_fit)

            scores[method] = target, source, seconds = measured(fit, Xte, X[test], y[test], seeds)
            results[name][method or "source-only"] = target
            cells.append(f"{target:.3f} / {source:.3f} ({seconds:.0f} s)")
        if args.skada:
            try:
                target, source, seconds = skada_dann(X[src], y[src], Xt, Xte, y[test], X[test], args.size)
                results[name]["skada DANN"] = target
                cells.append(f"{target:.3f} / {source:.3f} ({seconds:.0f} s)")
            except Exception as exc:  # report the failure in the table, keep the other columns
                cells.append(f"failed: {type(exc).__name__}")
        target, source, seconds = measured(
            lambda seed: FineTuneClassifier(image_size=args.size, random_state=seed).fit(Xt, y[tgt]),
            Xte, X[test], y[test], seeds)
        results[name]["target labels (ceiling)"] = target
        pixels.append((name, pixel_lr(X[src], y[src], Xte, y[test]), pixel_lr(Xt, y[tgt], Xte, y[test])))
        cells.append(f"{target:.3f} / {source:.3f} ({seconds:.0f} s)")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        auto = FineTuneClassifier(adaptation="auto")._adaptation_method()
        gains.append((name, auto, scores[auto][0] - scores[None][0], scores[auto][1] - scores[None][1]))
    print("\nFor reference, LogisticRegression() on the raw pixels, target accuracy:\n")
    print("| shift | trained on the source labels | trained on the target labels |\n|---|---:|---:|")
    for name, from_source, from_target in pixels:
        print(f"| {name} | {from_source:.3f} | {from_target:.3f} |")
    print()
    for name, auto, target_gain, source_change in gains:
        print(f"* {name}: adaptation='auto' ({auto}) target {target_gain:+.3f}, source {source_change:+.3f} "
              "against source-only")
    if args.figure:
        figure(results, args.figure)


def pixel_lr(X_train, y_train, X_test, y_test):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000).fit(X_train.reshape(len(X_train), -1), y_train)
    return model.score(X_test.reshape(len(X_test), -1), y_test)


def skada_dann(Xs, ys, Xt, Xte, yte, Xsrc_test, size):
    """skada's DANN (on skorch) with the same Lite0 network, whole backbone, 10 epochs."""
    import torch
    from skada.deep import DANN
    from skada.deep.modules import DomainClassifier

    from sktransfer import load_backbone
    from sktransfer.data._preprocessing import prepare_batch

    spec = load_backbone("efficientnet_lite0", weights=None).preprocessing.replace(image_size=size)

    def ready(a):
        return prepare_batch(torch.tensor(a[:, None], dtype=torch.float32), spec, torch.device("cpu")).numpy()

    class Lite(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = load_backbone("efficientnet_lite0").model
            self.feature_layer = torch.nn.Identity()
            self.head = torch.nn.Linear(1280, 10)

        def forward(self, x, sample_weight=None, **kwargs):  # skada passes its fit/predict keywords
            return self.head(self.feature_layer(self.backbone.forward_features(x).mean((2, 3))))

    torch.manual_seed(0)
    start = time.perf_counter()
    net = DANN(Lite(), reg=1.0, domain_classifier=DomainClassifier(num_features=1280), layer_name="feature_layer",
               batch_size=32, max_epochs=10, train_split=None, optimizer=torch.optim.AdamW, lr=1e-3)
    X_all = np.concatenate([ready(Xs), ready(Xt)])
    y_all = np.concatenate([ys, -np.ones(len(Xt), int)])
    domain = np.r_[np.ones(len(Xs), int), -2 * np.ones(len(Xt), int)]
    net.fit(X_all, y_all, sample_domain=domain)
    seconds = time.perf_counter() - start
    target = float((net.predict(ready(Xte), sample_domain=np.full(len(Xte), -2)) == yte).mean())
    source = float((net.predict(ready(Xsrc_test), sample_domain=np.ones(len(Xsrc_test), int),
                                allow_source=True) == yte).mean())
    return target, source, seconds


def figure(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    methods = list(results[names[0]])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        ax.bar(np.arange(len(names)) + i * width, [results[n][method] for n in names], width, label=method)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_ylabel("target accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
