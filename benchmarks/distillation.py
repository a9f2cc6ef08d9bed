"""Knowledge transfer between models: a distilled cheaper student, and soups of fine-tuned runs.

Distillation (digits): ``--n-labelled`` labelled digits and ``--n-unlabelled`` unlabelled
ones. The teacher is ``FineTuneClassifier(image_size=64)`` on the labelled digits; the
student is ``FineTuneClassifier(image_size=32)`` (Lite0 cut at stage 3 at that size),
trained on the labels alone, then distilled from the teacher on labelled + unlabelled
digits (``missing_label=-1``) at several temperatures and weights. Accuracy on
``--n-test`` held-out digits, fit time, and predict throughput (best of 3 over the test
digits). Repeated over ``--draws`` draws of the labelled digits; means are reported.

Soups: ``--soup-runs`` runs of ``FineTuneClassifier(image_size=32)`` on ``--n-soup`` labelled
digits (200: few images, the pretrained BatchNorm statistics kept; 600: statistics learned),
differing only in ``random_state`` (same pretrained weights, other shuffles and
augmentation); the uniform soup of the first two and of all, and the greedy soup
(members added best first on a separate validation set, kept when its score holds); with
learned statistics, also the soup with its statistics re-estimated on the training digits.
Usage::

    python benchmarks/distillation.py [--n-labelled 50] [--n-unlabelled 1000] [--draws 3]
"""

import argparse
import time

import numpy as np
from _common import best_of, machine
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sktransfer import FineTuneClassifier, fuse, greedy_soup

SETTINGS = [(4.0, 0.5), (2.0, 0.5), (4.0, 0.9), (1.0, 0.5)]  # (distill_temperature, distill_weight)


def throughput(model, X):
    return len(X) / best_of(lambda: model.predict(X))


def fitted(model, X, y):
    start = time.perf_counter()
    model.fit(X, y)
    return model, time.perf_counter() - start


def distillation(X, y, args):
    rows = {}

    def add(name, model, seconds, X_test, y_test):
        acc, speed = model.score(X_test, y_test), throughput(model, X_test)
        rows.setdefault(name, []).append((acc, seconds, speed))

    for draw in range(args.draws):
        rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=args.n_test, stratify=y, random_state=draw)
        X_lab, X_unl, y_lab, _ = train_test_split(rest, y_rest, train_size=args.n_labelled, stratify=y_rest,
                                                  random_state=draw)
        X_unl = X_unl[:args.n_unlabelled]
        teacher, seconds = fitted(FineTuneClassifier(image_size=64, random_state=0), X_lab, y_lab)
        add("teacher: 64 px, labels only", teacher, seconds, X_test, y_test)
        student, seconds = fitted(FineTuneClassifier(image_size=32, random_state=0), X_lab, y_lab)
        add("student: 32 px, labels only", student, seconds, X_test, y_test)
        X_fit = np.concatenate([X_lab, X_unl])
        y_fit = np.concatenate([y_lab, -np.ones(len(X_unl), int)])
        for temperature, weight in SETTINGS:
            model = FineTuneClassifier(image_size=32, random_state=0, missing_label=-1, teacher=teacher,
                                       distill_temperature=temperature, distill_weight=weight)
            model, seconds = fitted(model, X_fit, y_fit)
            add(f"student: 32 px, distilled (tau={temperature:g}, weight={weight:g})", model, seconds,
                X_test, y_test)
        print(f"draw {draw}: " + ", ".join(f"{k.split(':')[0]} {v[-1][0]:.3f}" for k, v in list(rows.items())[:3]),
              flush=True)
    print(f"\n{args.n_labelled} labelled + {args.n_unlabelled} unlabelled digits, {args.n_test} test digits, "
          f"means of {args.draws} draws.\n")
    print("| model | accuracy | fit (s) | predict (img/s) |")
    print("|---|---:|---:|---:|")
    for name, values in rows.items():
        acc, seconds, speed = np.mean(values, axis=0)
        spread = np.ptp([v[0] for v in values])
        print(f"| {name} | {acc:.3f} (range {spread:.3f}) | {seconds:.1f} | {speed:.0f} |")


def soups(X, y, args, n_soup):
    rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=args.n_test, stratify=y, random_state=0)
    X_fit, X_val, y_fit, y_val = train_test_split(rest, y_rest, train_size=n_soup, test_size=300,
                                                  stratify=y_rest, random_state=0)
    runs = [FineTuneClassifier(image_size=32, random_state=seed).fit(X_fit, y_fit) for seed in range(args.soup_runs)]
    scores = [m.score(X_test, y_test) for m in runs]
    print(f"\nSoups: {args.soup_runs} runs on {n_soup} labelled digits (random_state 0..{args.soup_runs - 1}), "
          f"32 px, BatchNorm statistics {runs[0].bn_stats_}; {args.n_test} test digits; greedy soup chosen on "
          "300 other digits.\n")
    print("| model | test accuracy |")
    print("|---|---:|")
    for seed, s in enumerate(scores):
        print(f"| run {seed} | {s:.3f} |")
    print(f"| mean of runs 0-1 | {np.mean(scores[:2]):.3f} |")
    print(f"| uniform soup of runs 0-1 | {fuse(runs[:2]).score(X_test, y_test):.3f} |")
    print(f"| mean of all {len(runs)} runs | {np.mean(scores):.3f} |")
    print(f"| uniform soup of all {len(runs)} | {fuse(runs).score(X_test, y_test):.3f} |")
    greedy = greedy_soup(runs, X_val, y_val)
    kept = ", ".join(str(i) for i in np.flatnonzero(greedy.soup_weights_))
    print(f"| greedy soup (kept runs {kept}) | {greedy.score(X_test, y_test):.3f} |")
    if runs[0].bn_stats_ == "update":  # statistics learned in training: re-estimate them for the soup
        print(f"| uniform soup of all {len(runs)}, BatchNorm re-estimated on the training digits | "
              f"{fuse(runs, X=X_fit).score(X_test, y_test):.3f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-labelled", type=int, default=50)
    parser.add_argument("--n-unlabelled", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--n-soup", type=int, nargs="+", default=[200, 600])
    parser.add_argument("--soup-runs", type=int, default=4)
    parser.add_argument("--skip", choices=["distillation", "soups"], default=None)
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    X, y = load_digits(return_X_y=True)
    X = X.reshape(-1, 8, 8)
    if args.skip != "distillation":
        distillation(X, y, args)
    if args.skip != "soups":
        for n_soup in args.n_soup:
            soups(X, y, args, n_soup)


if __name__ == "__main__":
    main()
