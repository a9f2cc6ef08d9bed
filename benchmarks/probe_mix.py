"""How much of the probe ensemble's two members a few-image classifier should predict with.

``FineTuneClassifier``'s few-image fits predict with the mean of two networks' class
probabilities: the fine-tuned network and the linear probe it started from (``probe_net_``).
This script fits the defaults once per draw and scores mixes ``(1 - w) * fine-tuned + w * probe``
of the same two networks for several probe weights ``w`` (0.5 is the default), beside each
member alone and the bar of issue 14: the best of LogisticRegression on raw pixels and
StandardScaler + LogisticRegression on frozen Lite0 embeddings of ``layer="auto"`` (the
extractor's default) and of ``"stage5"``. "best w" is the weight that scores highest on the
test set: an upper bound for any rule that picks one weight per cell.

With ``--members K`` each draw is also fitted with ``random_state + 1 ... + K - 1``, and two more
columns score the mean probabilities of the K fine-tuned networks (a deep ensemble from the same
solved start, each trained with its own random stream), alone and averaged half and half with the
probe. The weight columns stay those of the first fit.

Same image sets, test sets and stratified draws as ``few_shot.py`` (3 draws of n = 20, 50, 100; the
faces have 120 training images, so n = 20 and 50). Usage::

    python benchmarks/probe_mix.py [--random-state 0] [--faces-splits 0 1 2 3 4] [--other-split 0]
        [--members 1] [--sets digits photo_crops faces] [--sizes 64 32]
"""

import argparse
import time

import numpy as np
from _common import machine
from _datasets import SETS
from few_shot import baseline_scores, draws, pool_and_test

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


def cell_scores(name, size, split, ns, random_state, members):
    """Per n: the three logistic regressions' and, per weight (then, with ``members > 1``, for the
    ensemble alone and with the probe), the mean test accuracy over 3 draws."""
    Xp, Xt, yp, yt = pool_and_test(name, split)
    embeddings = {}
    for layer in ("auto", "stage5"):
        ext = PretrainedFeatureExtractor(image_size=size, layer=layer).fit(Xp)
        embeddings[layer] = ext.transform(Xp), ext.transform(Xt)
    out = {}
    for n in ns:
        bars, mixes = [], []
        for i in draws(yp, n, 3, n):
            bars.append(baseline_scores(Xp, Xt, yp, yt, i, embeddings.values()))
            fits = [members_proba(FineTuneClassifier(image_size=size, random_state=random_state + j)
                                  .fit(Xp[i], yp[i]), Xt) for j in range(members)]
            (fine_tuned, probe), truth = fits[0], np.searchsorted(np.unique(yp[i]), yt)
            mix = [(1 - w) * fine_tuned + w * probe for w in WEIGHTS]
            if members > 1:
                ensemble = np.mean([f[0] for f in fits], 0)
                mix += [ensemble, (ensemble + probe) / 2]
            mixes.append([(p.argmax(1) == truth).mean() for p in mix])
        out[n] = np.mean(bars, 0), np.mean(mixes, 0)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--random-state", type=int, default=0, help="FineTuneClassifier's random_state")
    parser.add_argument("--faces-splits", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="test splits of the faces (their means are reported)")
    parser.add_argument("--other-split", type=int, default=0, help="the test split of digits and photo_crops")
    parser.add_argument("--members", type=int, default=1, help="fine-tuned networks per draw (K)")
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 32])
    args = parser.parse_args()
    k = args.members
    extra = [f"{k} fine-tuned", f"{k} fine-tuned + probe"] if k > 1 else []
    print(f"Machine: {machine()}\n")
    print("| set | px | n | bar | " + " | ".join([f"w={w}" for w in WEIGHTS] + extra) + " | best w |")
    print("|---|---:|---:|---:|" + "---:|" * (len(WEIGHTS) + len(extra) + 1))
    start = time.perf_counter()
    for size in args.sizes:
        for name in args.sets:
            splits = args.faces_splits if name == "faces" else [args.other_split]
            ns = (20, 50) if name == "faces" else (20, 50, 100)
            per_split = [cell_scores(name, size, split, ns, args.random_state, k) for split in splits]
            for n in ns:
                bar = np.mean([s[n][0] for s in per_split], 0).max()
                mix = np.mean([s[n][1] for s in per_split], 0)
                cells = [f"{a:.3f}" + ("" if a >= bar - 1e-9 else " (below)") for a in mix]
                print(f"| {name} | {size} | {n} | {bar:.3f} | " + " | ".join(cells)
                      + f" | {WEIGHTS[int(np.argmax(mix[:len(WEIGHTS)]))]} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
