"""Learning curves with few labelled images: sktransfer's defaults beside the alternatives.

For each image set (``_datasets.py``: digits, photo_crops, faces), image size (32, 64) and
number of labelled training images n (20, 50, 100, 200, 500 and the whole pool), on a fixed
stratified held-out test set:

* LogisticRegression on raw pixels (scaled to [0, 1]);
* StandardScaler + LogisticRegression on frozen Lite0 embeddings, for the last feature map
  (``layer=None``, the extractor's old default), ``"stage5"`` and ``layer="auto"`` (the default);
* ``FineTuneClassifier(image_size=..., random_state=0)``: nothing else set (``--random-state``
  changes this seed only: the draws, the logistic regressions, ``head_hidden`` and skorch stay);
* ``FineTuneClassifier(image_size=..., head_hidden=(1024,), random_state=0)`` (a hidden layer in
  the new head), for n <= ``--hidden-max-n``;
* skorch ``NeuralNetClassifier`` on the same Lite0 network (whole backbone, AdamW lr 1e-3, batch
  32, 10 epochs, no validation split), for n <= ``--skorch-max-n`` (its cost grows with n).

Training sets of n <= ``--repeat-max-n`` images are averaged over ``--repeats`` stratified draws.
``--test-splits K`` repeats everything over K held-out test sets (stratified splits with seeds
F ... F+K-1, F from ``--first-split``; the default, 1 from 0, is the one fixed split) and reports
the means: for small sets such as the faces, whose test set has 80 images, one split decides rows
by one or two images. ``--min-n`` and ``--max-n`` keep the rows of n in that range. Usage::

    python benchmarks/few_shot.py [--sets digits photo_crops faces] [--sizes 32 64]
        [--repeats 3] [--test-splits 1] [--first-split 0] [--random-state 0] [--min-n 0]
        [--max-n N] [--figure docs/figures/few_shot.png]
"""

import argparse
import time

import numpy as np
import torch
from _common import machine
from _datasets import SETS
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor, load_backbone
from sktransfer.data._preprocessing import prepare_batch

SIZES = {"digits": [20, 50, 100, 200, 500, None], "photo_crops": [20, 50, 100, 200, 500, None],
         "faces": [20, 50, None]}
TEST = {"digits": 500, "photo_crops": 500, "faces": 80}
FROZEN_LAYERS = {"last map (layer=None)": None, "stage5": "stage5", "auto (default)": "auto"}


def draws(y_pool, n, repeats, repeat_max_n):
    if n is None or n >= len(y_pool):
        return [np.arange(len(y_pool))]
    return [train_test_split(np.arange(len(y_pool)), train_size=n, stratify=y_pool, random_state=s)[0]
            for s in range(repeats if n <= repeat_max_n else 1)]


def as_unit(X):
    return X.astype(np.float32) / (255.0 if X.dtype == np.uint8 else max(1.0, float(X.max())))


def pool_and_test(name, split=0):
    """``(X_pool, X_test, y_pool, y_test)``: image set ``name`` split into the pool that training
    images are drawn from and a stratified test set of ``TEST[name]`` images (``split``: its seed)."""
    X, y = SETS[name]()
    return train_test_split(X, y, test_size=TEST[name], stratify=y, random_state=split)


def frozen_embeddings(Xp, Xt, size):
    """``{label: (pool features, test features, layer_)}``: the frozen Lite0 embeddings of
    ``FROZEN_LAYERS`` at ``size`` px, on which the logistic regressions of issue 14's bar train."""
    embeddings = {}
    for label, layer in FROZEN_LAYERS.items():
        ext = PretrainedFeatureExtractor(image_size=size, layer=layer).fit(Xp)
        embeddings[label] = (ext.transform(Xp), ext.transform(Xt), ext.layers_[0][0])
    return embeddings


def baseline_scores(Xp, Xt, yp, yt, i, features):
    """Test accuracies of the logistic regressions of issue 14's bar, trained on the pool rows ``i``:
    on raw pixels, then StandardScaler + LogisticRegression on each ``(pool, test)`` pair of
    ``features`` (frozen embeddings)."""
    flat = lambda a: as_unit(a).reshape(len(a), -1)
    scores = [LogisticRegression(max_iter=1000).fit(flat(Xp[i]), yp[i]).score(flat(Xt), yt)]
    return scores + [make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(Fp[i], yp[i]).score(Ft, yt)
                     for Fp, Ft in features]


def skorch_fit_score(Xtr, ytr, Xte, yte, size, n_classes, epochs=10):
    from skorch import NeuralNetClassifier

    spec = load_backbone("efficientnet_lite0", weights=None).preprocessing.replace(image_size=size)

    def ready(X):
        return prepare_batch(torch.tensor(as_unit(X)[:, None]), spec, torch.device("cpu")).numpy()

    class LiteNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = load_backbone("efficientnet_lite0").model
            self.head = torch.nn.Linear(1280, n_classes)

        def forward(self, x):
            return self.head(self.backbone.forward_features(x).mean((2, 3)))

    torch.manual_seed(0)
    net = NeuralNetClassifier(
        LiteNet, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.AdamW, lr=1e-3,
        max_epochs=epochs, batch_size=32, train_split=None, iterator_train__shuffle=True, verbose=0,
    )
    net.fit(ready(Xtr), ytr.astype(np.int64))
    return float((net.predict(ready(Xte)) == yte).mean())


def curve(name, size, repeats, repeat_max_n, skorch_max_n, hidden_max_n, split=0, min_n=0, max_n=None,
          random_state=0):
    Xp, Xt, yp, yt = pool_and_test(name, split)
    embeddings = frozen_embeddings(Xp, Xt, size)
    rows = []
    for n in [n for n in SIZES[name] if (n is None or n >= min_n) and (max_n is None or (n or len(yp)) <= max_n)]:
        idxs = draws(yp, n, repeats, repeat_max_n)
        row = {"n": len(idxs[0]), "draws": len(idxs)}
        features = [(Fp, Ft) for Fp, Ft, _ in embeddings.values()]
        raw, *frozen = np.mean([baseline_scores(Xp, Xt, yp, yt, i, features) for i in idxs], 0)
        row["raw pixels + LR"] = float(raw)
        for label, score in zip(embeddings, frozen):
            row[f"frozen {label} + LR"] = float(score)
        scores, seconds = [], []
        for i in idxs:
            start = time.perf_counter()
            clf = FineTuneClassifier(image_size=size, random_state=random_state).fit(Xp[i], yp[i])
            seconds.append(time.perf_counter() - start)
            scores.append(clf.score(Xt, yt))
        row["FineTuneClassifier (defaults)"] = np.mean(scores)
        row["fit s"] = np.mean(seconds)
        row["layer_"] = clf.layer_
        if hidden_max_n and row["n"] <= hidden_max_n:
            row["FineTune head_hidden=(1024,)"] = np.mean([
                FineTuneClassifier(image_size=size, head_hidden=(1024,), random_state=0).fit(Xp[i], yp[i])
                .score(Xt, yt) for i in idxs])
        if skorch_max_n and row["n"] <= skorch_max_n:
            row["skorch, 10 epochs"] = np.mean([
                skorch_fit_score(Xp[i], yp[i], Xt, yt, size, len(np.unique(np.r_[yp, yt]))) for i in idxs])
        rows.append(row)
        print(f"  {name} {size}px split {split} n={row['n']}: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "n"), flush=True)
    auto_layer = embeddings["auto (default)"][2]
    return rows, auto_layer, len(yt)


def mean_over_splits(splits):
    """``curve``'s results over several test splits: numbers averaged, draws counted over all splits."""
    rows, auto_layer, n_test = splits[0]
    if len(splits) == 1:
        return rows, auto_layer, n_test
    merged = []
    for at_n in zip(*(split_rows for split_rows, _, _ in splits)):
        row = dict(at_n[0])
        for key, value in row.items():
            if isinstance(value, float) and key != "n":
                row[key] = float(np.mean([r[key] for r in at_n]))
        row["draws"] = sum(r["draws"] for r in at_n)
        merged.append(row)
    layers = {layer for _, layer, _ in splits}
    return merged, "/".join(sorted(layers)), f"{n_test} x {len(splits)} splits"


def table(name, size, rows, auto_layer, n_test):
    methods = [k for k in rows[0] if k not in ("n", "draws", "fit s", "layer_")]
    methods += [k for k in rows[-1] if k not in methods and k not in ("n", "draws", "fit s", "layer_")] \
        if len(rows[-1]) > len(rows[0]) else []
    print(f"\n{name}, {size} px ({n_test} test images; frozen auto layer = {auto_layer}; "
          f"FineTuneClassifier layer_ = {rows[0]['layer_']})\n")
    print("| n labelled | " + " | ".join(methods) + " | FineTune fit s | FineTune >= best LR |")
    print("|---:|" + "---:|" * (len(methods) + 2))
    for row in rows:
        best_lr = max(v for k, v in row.items() if k.endswith("+ LR"))
        cells = [f"{row[m]:.3f}" if m in row else "-" for m in methods]
        ok = "yes" if row["FineTuneClassifier (defaults)"] >= best_lr else \
            f"no ({row['FineTuneClassifier (defaults)'] - best_lr:+.3f})"
        n = f"{row['n']}" + (f" (mean of {row['draws']})" if row["draws"] > 1 else "")
        print(f"| {n} | " + " | ".join(cells) + f" | {row['fit s']:.1f} | {ok} |")


def figure(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, ((name, size), rows) in zip(axes[0], results.items()):
        ns = [r["n"] for r in rows]
        for key, style in (("FineTuneClassifier (defaults)", "o-"), ("raw pixels + LR", "s--"),
                           ("frozen auto (default) + LR", "^--"), ("frozen last map (layer=None) + LR", "v:"),
                           ("skorch, 10 epochs", "x-.")):
            pts = [(r["n"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=key.replace(" (defaults)", ""))
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_title(f"{name}, {size} px")
        ax.set_xlabel("labelled training images")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repeat-max-n", type=int, default=100, help="average draws up to this n")
    parser.add_argument("--skorch-max-n", type=int, default=200)
    parser.add_argument("--hidden-max-n", type=int, default=100, help="head_hidden=(1024,) up to this n")
    parser.add_argument("--min-n", type=int, default=0, help="only the rows of n >= this (and the whole pool)")
    parser.add_argument("--max-n", type=int, default=None, help="only the rows of n <= this")
    parser.add_argument("--test-splits", type=int, default=1, help="average over this many test sets")
    parser.add_argument("--first-split", type=int, default=0, help="the first test set's seed")
    parser.add_argument("--random-state", type=int, default=0, help="the default FineTuneClassifier's random_state")
    parser.add_argument("--figure", default=None)
    args = parser.parse_args()
    print(f"Machine: {machine()}")
    results = {}
    for name in args.sets:
        for size in args.sizes:
            splits = [curve(name, size, args.repeats, args.repeat_max_n, args.skorch_max_n, args.hidden_max_n,
                            split, args.min_n, args.max_n, args.random_state)
                      for split in range(args.first_split, args.first_split + args.test_splits)]
            rows, auto_layer, n_test = mean_over_splits(splits)
            table(name, size, rows, auto_layer, n_test)
            results[(name, size)] = rows
    if args.figure:
        figure(results, args.figure)


if __name__ == "__main__":
    main()
