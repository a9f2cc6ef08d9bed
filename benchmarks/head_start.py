"""The new head's start when training updates the BatchNorm statistics (10 batches or more).

``FineTuneClassifier(image_size=s, head_init=h, random_state=seed)``, nothing else set, for
``h`` in ``"solve"`` (a logistic regression solved on the frozen features, computed with the
pretrained statistics), ``"zeros"`` and ``"random"`` (PyTorch's initialisation); ``"auto"``
picks ``"zeros"`` in these cells. Each cell is an image set of ``_datasets.py`` at one size,
with ``n`` training images (the whole pool when omitted): ``few_shot.py``'s first draw from the
pool of its split 0 (``draws``), and that split's held-out test images. Means over
``--seeds`` seeds (shuffling, augmentation, dropout; and the random head's draw). Usage::

    python benchmarks/head_start.py [--seeds 3] [--cells photo_crops:32:500 digits:64]
"""

import argparse
import time

import numpy as np
from _common import machine
from few_shot import draws, pool_and_test

from sktransfer import FineTuneClassifier

STARTS = ("solve", "zeros", "random")
CELLS = ("photo_crops:32:500", "photo_crops:32", "digits:32:500", "photo_crops:64:500")


def cell_data(spec):
    name, size, *n = spec.split(":")
    Xp, Xt, yp, yt = pool_and_test(name)
    i = draws(yp, int(n[0]) if n else None, 1, 0)[0]
    return name, int(size), Xp[i], yp[i], Xt, yt


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), help="set:size[:n]")
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    print("| set, size, n | " + " | ".join(f"head_init={h!r}" for h in STARTS) + " | mean fit s |")
    print("|---|" + "---:|" * (len(STARTS) + 1))
    for spec in args.cells:
        name, size, Xp, yp, Xt, yt = cell_data(spec)
        means, seconds = [], []
        for start in STARTS:
            scores = []
            for seed in range(args.seeds):
                clf = FineTuneClassifier(image_size=size, head_init=start, random_state=seed)
                t = time.perf_counter()
                clf.fit(Xp, yp)
                seconds.append(time.perf_counter() - t)
                scores.append(clf.score(Xt, yt))
            assert clf.bn_stats_ == "update", "these cells are meant to update the statistics"
            means.append(f"{np.mean(scores):.3f} ({min(scores):.3f}-{max(scores):.3f})")
        print(f"| {name}, {size} px, {len(yp)} | " + " | ".join(means) + f" | {np.mean(seconds):.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
