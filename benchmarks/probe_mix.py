"""How much of the probe ensemble's two members a few-image classifier should predict with.

``FineTuneClassifier``'s few-image fits predict with the mean of two networks' class
probabilities: the fine-tuned network and the linear probe it started from (``probe_net_``).
This script fits the defaults once per draw and scores mixes ``(1 - w) * fine-tuned + w * probe``
of the same two networks for several probe weights ``w`` (0.5 is the default), beside each
member alone and the bar of issue 14: the best of LogisticRegression on raw pixels and
StandardScaler + LogisticRegression on frozen Lite0 embeddings of ``layer="auto"`` (the
extractor's default) and of ``"stage5"``. "best w" is the weight that scores highest on the
test set: an upper bound for any rule that picks one weight per cell.

Same image sets, test sets and stratified draws as ``few_shot.py`` (3 draws of n = 20, 50, 100; the
faces have 120 training images, so n = 20 and 50). Usage::

    python benchmarks/probe_mix.py [--random-state 0] [--faces-splits 0 1 2 3 4] [--other-split 0]
"""

import argparse
import time

import numpy as np
from _common import machine
from _datasets import SETS
from few_shot import TEST, as_unit, draws
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor

WEIGHTS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def members_proba(clf, X):
    """Class probabilities of the fine-tuned network alone and of the probe alone."""
    net, probe = clf.net_, clf.probe_net_
    try:
        clf.probe_net_ = None  # without a probe, predict_proba is net_'s
        fine_tuned = clf.predict_proba(X)
        clf.net_ = probe
        return fine_tuned, clf.predict_proba(X)
    finally:
        clf.net_, clf.probe_net_ = net, probe


def cell_scores(name, size, split, ns, random_state):
    """Per n: the three logistic regressions' and, per weight, the mix's mean test accuracy over 3 draws."""
    X, y = SETS[name]()
    Xp, Xt, yp, yt = train_test_split(X, y, test_size=TEST[name], stratify=y, random_state=split)
    embeddings = {}
    for layer in ("auto", "stage5"):
        ext = PretrainedFeatureExtractor(image_size=size, layer=layer).fit(Xp)
        embeddings[layer] = ext.transform(Xp), ext.transform(Xt)
    flat = lambda a: as_unit(a).reshape(len(a), -1)
    out = {}
    for n in ns:
        bars, mixes = [], []
        for i in draws(yp, n, 3, n):
            lr = [LogisticRegression(max_iter=1000).fit(flat(Xp[i]), yp[i]).score(flat(Xt), yt)]
            lr += [make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(Fp[i], yp[i]).score(Ft, yt)
                   for Fp, Ft in embeddings.values()]
            bars.append(lr)
            clf = FineTuneClassifier(image_size=size, random_state=random_state).fit(Xp[i], yp[i])
            fine_tuned, probe = members_proba(clf, Xt)
            truth = np.searchsorted(clf.classes_, yt)
            mixes.append([(((1 - w) * fine_tuned + w * probe).argmax(1) == truth).mean() for w in WEIGHTS])
        out[n] = np.mean(bars, 0), np.mean(mixes, 0)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--random-state", type=int, default=0, help="FineTuneClassifier's random_state")
    parser.add_argument("--faces-splits", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="test splits of the faces (their means are reported)")
    parser.add_argument("--other-split", type=int, default=0, help="the test split of digits and photo_crops")
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    print("| set | px | n | bar | " + " | ".join(f"w={w}" for w in WEIGHTS) + " | best w |")
    print("|---|---:|---:|---:|" + "---:|" * (len(WEIGHTS) + 1))
    start = time.perf_counter()
    for size in (64, 32):
        for name in SETS:
            splits = args.faces_splits if name == "faces" else [args.other_split]
            ns = (20, 50) if name == "faces" else (20, 50, 100)
            per_split = [cell_scores(name, size, split, ns, args.random_state) for split in splits]
            for n in ns:
                bar = np.mean([s[n][0] for s in per_split], 0).max()
                mix = np.mean([s[n][1] for s in per_split], 0)
                cells = [f"{a:.3f}" + ("" if a >= bar - 1e-9 else " (below)") for a in mix]
                print(f"| {name} | {size} | {n} | {bar:.3f} | " + " | ".join(cells)
                      + f" | {WEIGHTS[int(np.argmax(mix))]} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
