"""Accuracy of FineTuneClassifier settings on few-image draws: how the few-image defaults were chosen.

Same image sets, test sets and stratified draws as ``few_shot.py``; each setting is passed to
``FineTuneClassifier(image_size=size, random_state=0, **setting)`` and the test accuracy is the
mean over the draws. Usage::

    python benchmarks/few_shot_settings.py --case photo_crops 64 100 --case digits 32 100 \\
        --setting '{}' --setting '{"layer_decay": 0.7}' [--draws 3]
"""

import argparse
import json
import time

import numpy as np
from _common import machine
from few_shot import pool_and_test
from sklearn.model_selection import train_test_split

from sktransfer import FineTuneClassifier


def split(name, n, seed):
    Xp, Xt, yp, yt = pool_and_test(name)
    idx = train_test_split(np.arange(len(yp)), train_size=n, stratify=yp, random_state=seed)[0]
    return Xp[idx], yp[idx], Xt, yt


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", nargs=3, action="append", metavar=("SET", "SIZE", "N"), required=True)
    parser.add_argument("--setting", action="append", type=json.loads, required=True)
    parser.add_argument("--draws", type=int, default=1)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    print("| setting | " + " | ".join(f"{s} {px} px, n={n}" for s, px, n in args.case) + " |")
    print("|---|" + "---:|" * len(args.case))
    for setting in args.setting:
        cells = []
        for name, size, n in args.case:
            scores, seconds = [], []
            for seed in range(args.draws):
                Xtr, ytr, Xt, yt = split(name, int(n), seed)
                start = time.perf_counter()
                clf = FineTuneClassifier(image_size=int(size), random_state=0, **setting).fit(Xtr, ytr)
                seconds.append(time.perf_counter() - start)
                scores.append(clf.score(Xt, yt))
            cells.append(f"{np.mean(scores):.3f} ({np.mean(seconds):.0f} s)")
        print(f"| `{json.dumps(setting)}` | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
