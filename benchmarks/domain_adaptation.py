"""Unlabelled target images: each adaptation method against source-only and a target-supervised ceiling.

Source: labelled clean digits (scikit-learn's 8x8 digits). Target: other digits under a
shift, given without labels; scored on held-out shifted digits (target accuracy) and on
held-out clean digits (source accuracy). Shifts: contrast inversion, blur + noise, rotation
by 40 degrees. For each shift, ``FineTuneClassifier(image_size=32, random_state=0,
missing_label=-1, adaptation=...)`` with ``adaptation`` None (source-only), "adabn",
"coral", "dann", "pseudo_label"; the ceiling is the same estimator trained on the target
images with their labels. skada's deep DANN on the same backbone runs beside them when
skada is installed (``--skada``). Usage::

    python benchmarks/domain_adaptation.py [--size 32] [--n-source 300] [--n-target 300]
        [--figure docs/figures/domain_adaptation.png] [--skada]
"""

import argparse
import time

import numpy as np
from _common import machine
from scipy.ndimage import gaussian_filter, rotate
from sklearn.datasets import load_digits

from sktransfer import FineTuneClassifier

METHODS = [None, "adabn", "coral", "dann", "pseudo_label"]


def shifts():
    noise = np.random.RandomState(1)
    return {
        "contrast inversion": lambda a: 1.0 - a,
        "blur + noise": lambda a: np.clip(
            np.stack([gaussian_filter(im, 1.0) for im in a]) + noise.normal(0, 0.25, a.shape), 0, 1),
        "rotation 40 deg": lambda a: np.clip(np.stack([rotate(im, 40, reshape=False, order=1) for im in a]), 0, 1),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n-source", type=int, default=300)
    parser.add_argument("--n-target", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=500)
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
    columns = ["source-only"] + [m for m in METHODS if m] + (["skada DANN"] if args.skada else []) \
        + ["target labels (ceiling)"]
    print(f"{args.n_source} labelled source digits, {args.n_target} unlabelled target digits, "
          f"{len(test)} test digits of each domain, {args.size} px. Cells: target accuracy / source accuracy (fit s).\n")
    print("| shift | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    results = {}
    for name, shift in shifts().items():
        Xt, Xte = shift(X[tgt]), shift(X[test])
        X_fit = np.concatenate([X[src], Xt])
        y_fit = np.concatenate([y[src], -np.ones(len(tgt), int)])
        cells, results[name] = [], {}
        for method in METHODS:
            start = time.perf_counter()
            clf = FineTuneClassifier(image_size=args.size, random_state=0, missing_label=-1, adaptation=method)
            clf.fit(X_fit, y_fit)
            seconds = time.perf_counter() - start
            target, source = clf.score(Xte, y[test]), clf.score(X[test], y[test])
            results[name][method or "source-only"] = target
            cells.append(f"{target:.3f} / {source:.3f} ({seconds:.0f} s)")
        if args.skada:
            try:
                target, source, seconds = skada_dann(X[src], y[src], Xt, Xte, y[test], X[test], args.size)
                results[name]["skada DANN"] = target
                cells.append(f"{target:.3f} / {source:.3f} ({seconds:.0f} s)")
            except Exception as exc:  # report the failure in the table, keep the other columns
                cells.append(f"failed: {type(exc).__name__}")
        start = time.perf_counter()
        ceiling = FineTuneClassifier(image_size=args.size, random_state=0).fit(Xt, y[tgt])
        seconds = time.perf_counter() - start
        results[name]["target labels (ceiling)"] = ceiling.score(Xte, y[test])
        cells.append(f"{ceiling.score(Xte, y[test]):.3f} / {ceiling.score(X[test], y[test]):.3f} ({seconds:.0f} s)")
        # source-only first, in the table's order
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if args.figure:
        figure(results, args.figure)


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
