"""Frozen features of several stages at once: logistic regression on their concatenation.

``layer="auto"`` picks one stage (the deepest whose map is at least 4 pixels on a side: stage 5 at
64 px, stage 3 at 32 px). This script scores StandardScaler + LogisticRegression on the pooled
features of the stages around it, concatenated (``PretrainedFeatureExtractor(layer=[...])``), beside
issue 14's bar: the best of LogisticRegression on raw pixels and on ``layer="auto"`` and
``"stage5"``. Offsets are relative to the auto stage ``a``: ``a-2..a+1`` at 64 px is
``["stage3", "stage4", "stage5", "stage6"]``.

Same image sets, test sets and stratified draws as ``few_shot.py`` (3 draws of n = 20, 50, 100; the
faces n = 20 and 50), averaged over ``--faces-splits`` test splits of the faces and
``--other-splits`` of the other sets. Usage::

    python benchmarks/stage_probes.py [--faces-splits 0 ... 9] [--other-splits 0 1] [--sizes 32 64]
"""

import argparse
import time

import numpy as np
from _common import machine
from _datasets import SETS
from few_shot import baseline_scores, draws, pool_and_test

from sktransfer import PretrainedFeatureExtractor

SPANS = {"a-2..a": (-2, 0), "a-1..a+1": (-1, 1), "a-2..a+1": (-2, 1), "a-2..a+2": (-2, 2)}


def stage_blocks(X_pool, X_test, size, stages):
    """Per stage index: (pool features, test features), from one extractor over all ``stages``."""
    ext = PretrainedFeatureExtractor(image_size=size, layer=[f"stage{k}" for k in stages]).fit(X_pool)
    edges = np.cumsum([0] + ext.layer_widths_)
    Fp, Ft = ext.transform(X_pool), ext.transform(X_test)
    return {k: (Fp[:, a:b], Ft[:, a:b]) for k, a, b in zip(stages, edges[:-1], edges[1:])}


def scores(name, size, split, a):
    """Per n, per draw: raw-pixel LR, LR on stage ``a`` and on stage 5, then LR on each span."""
    Xp, Xt, yp, yt = pool_and_test(name, split)
    blocks = stage_blocks(Xp, Xt, size, sorted({5, *range(a - 2, min(a + 3, 8))}))
    spans = [[blocks[k] for k in range(a + lo, min(a + hi, 7) + 1)] for lo, hi in SPANS.values()]
    features = [blocks[a], blocks[5]] + [(np.hstack([p for p, _ in s]), np.hstack([t for _, t in s])) for s in spans]
    return {n: [baseline_scores(Xp, Xt, yp, yt, i, features) for i in draws(yp, n, 3, n)]
            for n in ((20, 50) if name == "faces" else (20, 50, 100))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces-splits", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--other-splits", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64])
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    print("| set | px | n | bar | raw pixels | auto | stage5 | " + " | ".join(SPANS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * (3 + len(SPANS)))
    start = time.perf_counter()
    for size in args.sizes:
        # the stage layer="auto" picks at this size: "stage5" -> 5
        a = int(PretrainedFeatureExtractor(image_size=size).fit(SETS["digits"]()[0][:2]).layers_[0][0][5:])
        for name in SETS:
            splits = args.faces_splits if name == "faces" else args.other_splits
            per_split = [scores(name, size, split, a) for split in splits]
            for n in per_split[0]:
                mean = np.mean([row for s in per_split for row in s[n]], 0)
                bar = mean[:3].max()
                cells = [f"{v:.3f}" + ("" if v >= bar - 1e-9 else " (below)") for v in mean[3:]]
                print(f"| {name} | {size} | {n} | {bar:.3f} | " + " | ".join(f"{v:.3f}" for v in mean[:3])
                      + " | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
