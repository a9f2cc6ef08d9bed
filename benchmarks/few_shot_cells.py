"""Issue 14's few-image cells, runs A and B: FineTuneClassifier settings beside the bar.

The cells are those where requirement 1 was decided by a few test images: the faces over five
test splits (n = 20, 50), the digits and photograph crops on one split (n = 20, 50, 100), each
n the mean of 3 stratified draws per split (``few_shot.py``'s draws). Run A is
``random_state=0`` with the faces' splits 0-4 and the other sets' split 0; run B is
``random_state=1``, splits 5-9 and split 1. The bar is issue 14's: the best of the means of
the logistic regressions of ``few_shot.py`` (on raw pixels, and on frozen embeddings of the last
map, stage 5 and ``layer="auto"``) on the same draws, at the same image size.

Each ``--setting`` (JSON, passed to ``FineTuneClassifier(image_size=size,
random_state=seed, **setting)``) prints one line per cell: the classifier's accuracy, a star
when below the bar, and in brackets its fine-tuned network alone (``probe_net_`` dropped; its test-time views, when the fit
has them, kept).
With ``--seeds K`` (K > 1) each draw is fitted K times (``random_state`` seed, seed + 100, ...)
and the line adds the mean of the K runs' probabilities (averaged with the probe half and half,
as the classifier does) and their uniform soup (``sktransfer.fuse``). Usage::

    python benchmarks/few_shot_cells.py --size 32 --setting '{}' --setting '{"min_steps": 200}'
    python benchmarks/few_shot_cells.py --size 32 --setting '{}' --seeds 3
    python benchmarks/few_shot_cells.py --size 64 --cell B faces 0 --seeds 3   # 0: all 120 faces
"""

import argparse
import json
import time
import warnings

import numpy as np
from _common import machine
from few_shot import baseline_scores, draws, frozen_embeddings, pool_and_test

from sktransfer import FineTuneClassifier, fuse

RUNS = {"A": (0, {"faces": range(0, 5), "digits": [0], "photo_crops": [0]}),
        "B": (1, {"faces": range(5, 10), "digits": [1], "photo_crops": [1]})}
CELLS = [(run, name, n) for run in RUNS for name, ns in
         (("faces", (20, 50)), ("digits", (20, 50, 100)), ("photo_crops", (20, 50, 100))) for n in ns]


def bar(name, size, n, splits):
    """Issue 14's bar on these draws: the best of the logistic regressions' mean accuracies."""
    scores = []
    for split in splits:
        Xp, Xt, yp, yt = pool_and_test(name, split)
        features = [(Fp, Ft) for Fp, Ft, _ in frozen_embeddings(Xp, Xt, size).values()]
        scores += [baseline_scores(Xp, Xt, yp, yt, i, features) for i in draws(yp, n or None, 3, 100)]
    return float(np.max(np.mean(scores, 0)))


def runs_of_one_draw(X, y, X_test, y_test, size, seed, setting, k):
    """Accuracies of K fits of one draw: the first run, and (k > 1) the K runs' mean and soup; each
    with the probe ensemble and, second, the fine-tuned network(s) alone."""
    fits, with_probe, alone, seconds = [], [], [], []
    for j in range(k):
        start = time.perf_counter()
        clf = FineTuneClassifier(image_size=size, random_state=seed + 100 * j, **setting).fit(X, y)
        seconds.append(time.perf_counter() - start)
        with_probe.append(clf.predict_proba(X_test))
        probe, clf.probe_net_ = clf.probe_net_, None
        alone.append(clf.predict_proba(X_test))
        clf.probe_net_ = probe
        fits.append(clf)
    accuracy = lambda p: float((fits[0].classes_[p.argmax(1)] == y_test).mean())
    out = {"one run": (accuracy(with_probe[0]), accuracy(alone[0]))}
    if k > 1:
        # the classifier's probabilities are the plain mean of its probe's and its network's
        probe_proba = 2 * with_probe[0] - alone[0] if fits[0].probe_net_ is not None else None
        mean_alone = np.mean(alone, 0)
        mixed = mean_alone if probe_proba is None else (probe_proba + mean_alone) / 2
        out[f"mean of {k}"] = (accuracy(mixed), accuracy(mean_alone))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            soup = fuse(fits)
        soup_with_probe = soup.score(X_test, y_test)
        soup.probe_net_ = None
        out[f"soup of {k}"] = (soup_with_probe, soup.score(X_test, y_test))
    return out, np.mean(seconds)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--setting", action="append", type=json.loads, default=None)
    parser.add_argument("--seeds", type=int, default=1, help="fits per draw (K)")
    parser.add_argument("--cell", nargs=3, action="append", metavar=("RUN", "SET", "N"),
                        help="only these cells (N = 0: the whole pool, one draw)")
    args = parser.parse_args()
    cells = [(run, name, int(n)) for run, name, n in args.cell] if args.cell else CELLS
    print(f"Machine: {machine()}\n")
    for run, name, n in cells:
        seed, splits = RUNS[run]
        splits = splits[name]
        the_bar = bar(name, args.size, n, splits)
        for setting in args.setting or [{}]:
            results, seconds = {}, []
            for split in splits:
                Xp, Xt, yp, yt = pool_and_test(name, split)
                for i in draws(yp, n or None, 3, 100):
                    out, s = runs_of_one_draw(Xp[i], yp[i], Xt, yt, args.size, seed, setting, args.seeds)
                    seconds.append(s)
                    for label, scores in out.items():
                        results.setdefault(label, []).append(scores)
            cells_text = []
            for label, scores in results.items():
                with_probe, alone = np.mean(scores, 0)
                star = "*" if with_probe < the_bar else ""
                cells_text.append(f"{label} {with_probe:.4f}{star} ({alone:.4f})")
            print(f"{run} {name} {args.size} px n={n or 'all'}, bar {the_bar:.4f}, `{json.dumps(setting)}`: "
                  + ", ".join(cells_text) + f"; fit {np.mean(seconds):.1f} s", flush=True)


if __name__ == "__main__":
    main()
