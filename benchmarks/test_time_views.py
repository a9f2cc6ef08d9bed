"""Test-time augmentation read out on issue 14's few-image cells: one fit per draw, several readouts.

Each draw of ``few_shot_cells.py``'s cells (runs A and B, the bar measured on the same draws) is
fitted once with ``FineTuneClassifier(image_size=size, random_state=seed, test_time_augment=0)``
and its test images are then predicted several ways from the same fit:

* ``plain``: one forward pass (the classifier without test-time augmentation);
* ``fixed kK``: the mean over the image and K fixed views, drawn once (seed 0) from the training
  augmentation, the same for every image (what ``test_time_augment=K`` does);
* ``random kK``: the mean over the image and K views drawn per image and batch (K = 4, 8);

each for both networks of the probe ensemble (``both``, what the classifier does), the fine-tuned
network alone (``net``), and the views for the fine-tuned network only with the probe plain
(``net views + plain probe``). A star marks a mean below the bar. Usage::

    python benchmarks/test_time_views.py --size 32 [--cell A faces 20 ...]
    python benchmarks/test_time_views.py --size 32 --timing   # predict_proba's seconds, 500 digits
"""

import argparse
import time

import numpy as np
import torch
from few_shot import draws, pool_and_test
from few_shot_cells import CELLS, RUNS, bar
from torch import nn

from sktransfer import FineTuneClassifier, RandomAffine
from sktransfer._test_time import ViewAverage, draw_views


class RandomViews(nn.Module):
    """The mean over the image and ``k`` views drawn anew for each image of each batch."""

    def __init__(self, net, k):
        super().__init__()
        self.net, self.k, self.augment = net, k, RandomAffine()

    def forward(self, x):
        generator = torch.Generator().manual_seed(0)
        p = [self.net(x).float().softmax(1)] + [self.net(self.augment(x, generator)).float().softmax(1)
                                                 for _ in range(self.k)]
        return torch.stack(p).mean(0).clamp_min(1e-12).log()


READOUTS = {"plain": None, "random k4": ("random", 4), "random k8": ("random", 8), "fixed k4": ("fixed", 4),
            "fixed k8": ("fixed", 8), "fixed k16": ("fixed", 16)}


def proba(clf, net, X, how):
    if how is not None:
        kind, k = how
        net = (RandomViews(net, k) if kind == "random" else
               ViewAverage(net, draw_views(RandomAffine(), k), clf._splits()))
    return clf._logits(X, net).float().softmax(1).numpy()


def readouts(clf, X):
    out = {}
    for label, how in READOUTS.items():
        net, probe = proba(clf, clf.net_, X, how), proba(clf, clf.probe_net_, X, how)
        out[f"{label} both"], out[f"{label} net"] = (net + probe) / 2, net
        if how is not None:
            out[f"{label} net views + plain probe"] = (net + proba(clf, clf.probe_net_, X, None)) / 2
    return out


def timing(size):
    """Seconds of ``predict_proba`` on 500 test digits (best of 3) for a fit on 50: the shipped
    classifier (probe ensemble and 8 views), without the views, and the fine-tuned network alone."""
    import copy

    Xp, Xt, yp, _ = pool_and_test("digits", 0)
    train = draws(yp, 50, 1, 100)[0]
    clf = FineTuneClassifier(image_size=size, random_state=0).fit(Xp[train], yp[train])
    one_pass = copy.deepcopy(clf)
    one_pass.test_time_views_ = one_pass.test_time_views_[:0]
    alone = copy.deepcopy(one_pass)
    alone.probe_net_ = None
    for label, est in (("probe ensemble + 8 views (shipped)", clf), ("probe ensemble, one pass", one_pass),
                       ("fine-tuned network alone, one pass", alone)):
        est.predict_proba(Xt[:50])  # warm-up
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            est.predict_proba(Xt)
            seconds.append(time.perf_counter() - start)
        print(f"{size} px, {label}: {min(seconds):.3f} s for {len(Xt)} images", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--cell", nargs=3, action="append", metavar=("RUN", "SET", "N"))
    parser.add_argument("--timing", action="store_true")
    args = parser.parse_args()
    if args.timing:
        return timing(args.size)
    cells = [(run, name, int(n)) for run, name, n in args.cell] if args.cell else CELLS
    for run, name, n in cells:
        seed, splits = RUNS[run]
        splits = splits[name]
        the_bar = bar(name, args.size, n, splits)
        scores, seconds = {}, []
        for split in splits:
            Xp, Xt, yp, yt = pool_and_test(name, split)
            for i in draws(yp, n or None, 3, 100):
                start = time.perf_counter()
                clf = FineTuneClassifier(image_size=args.size, random_state=seed, test_time_augment=0).fit(Xp[i], yp[i])
                seconds.append(time.perf_counter() - start)
                for label, p in readouts(clf, Xt).items():
                    scores.setdefault(label, []).append(float((clf.classes_[p.argmax(1)] == yt).mean()))
        text = ", ".join(f"{k} {np.mean(v):.4f}{'*' if np.mean(v) < the_bar else ''}" for k, v in scores.items())
        print(f"{run} {name} {args.size} px n={n or 'all'}, bar {the_bar:.4f}: {text}; fit {np.mean(seconds):.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
