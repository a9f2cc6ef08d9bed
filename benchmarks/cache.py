"""Embedding cache in a grid search: backbone passes and seconds, with and without the cache.

GridSearchCV over 5 values of C x 5 folds of Pipeline(extractor, LogisticRegression) on 600
digits, against the same grid on embeddings computed once beforehand. Usage::

    python benchmarks/cache.py [--blas-threads 1]

``--blas-threads`` runs everything inside ``threadpoolctl.threadpool_limits(N, user_api="blas")``
(numpy's and scipy's BLAS, which the LogisticRegression fits use; torch's threads are untouched).
"""

import argparse
import contextlib
import time

import numpy as np
from _common import machine
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

import sktransfer._extractor as extractor_module
from sktransfer import PretrainedFeatureExtractor, clear_cache
from sktransfer.backbones import _loading

IMAGES = []
REPEATS = 2
LR_SECONDS = []


class TimedLogisticRegression(LogisticRegression):
    """LogisticRegression that records the seconds of each fit (the same 130 fits in every run)."""

    def fit(self, X, y, sample_weight=None):
        start = time.perf_counter()
        result = super().fit(X, y, sample_weight)
        LR_SECONDS.append(time.perf_counter() - start)
        return result
_original = extractor_module.extract


def counting(backbone, source, *args, **kwargs):
    if not (type(source).__name__ == "ArraySource" and len(source) == 1):  # not fit's shape probe
        IMAGES.append(len(source))
    return _original(backbone, source, *args, **kwargs)


extractor_module.extract = counting


def grid(cache, X, y):
    pipe = Pipeline([("extract", PretrainedFeatureExtractor(image_size=64, layer="stage5", cache=cache)),
                     ("logisticregression", TimedLogisticRegression(max_iter=2000))])
    return GridSearchCV(pipe, {"logisticregression__C": np.logspace(-2, 2, 5)}, cv=5).fit(X, y)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="limit numpy's BLAS to this many threads (default: as the process starts)")
    args = parser.parse_args()
    limits = contextlib.nullcontext() if args.blas_threads is None else threadpool_limits(args.blas_threads, "blas")
    with limits:
        run_all(args.blas_threads)


def run_all(blas_threads):
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    # the 130 LogisticRegression fits of a grid (about 50 s) vary by seconds from run to run, more
    # than the rest of the grid costs: each run is timed whole and outside those fits; twice,
    # alternating, the run with the least time outside them kept
    runs = {"Pipeline grid, cache=False": lambda: grid(False, X, y),
            "Pipeline grid, cache=True": lambda: grid(True, X, y),
            "precompute once, then grid on embeddings": lambda: precomputed(X, y)}
    results = {}
    for _ in range(REPEATS):
        for name, run in runs.items():
            clear_cache()
            _loading._BUILT.clear()  # every run starts from a process that built nothing yet
            IMAGES.clear()
            LR_SECONDS.clear()
            start = time.perf_counter()
            search = run()
            seconds = time.perf_counter() - start
            passes = sum(IMAGES) / len(X)
            best = results.get(name)
            if best is None or seconds - sum(LR_SECONDS) < best[1] - best[2]:
                results[name] = (passes, seconds, sum(LR_SECONDS), search.best_score_)
    rows = [(name, *results[name]) for name in runs]
    extractor = PretrainedFeatureExtractor(image_size=64, layer="stage5", cache=False).fit(X)
    print(f"Machine: {machine()}")
    blas = "as the process starts" if blas_threads is None else f"limited to {blas_threads} (threadpoolctl)"
    print("GridSearchCV, 5 C values x 5 folds (+ refit), 600 digits, image_size=64, layer='stage5'; "
          f"BLAS threads {blas}\n")
    one_pass = min(_timed(lambda: extractor.transform(X)) for _ in range(3))
    baseline = rows[-1][2] - rows[-1][3]
    print(f"One backbone pass over the 600 digits: {one_pass:.2f} s (best of 3).\n")
    print("| run | backbone passes over the data | seconds | in LogisticRegression fits | outside them "
          "| beyond the precomputed grid, outside the LR fits, in passes | best CV score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, passes, seconds, in_lr, score in rows:
        print(f"| {name} | {passes:.2f} | {seconds:.1f} | {in_lr:.1f} | {seconds - in_lr:.2f} "
              f"| {(seconds - in_lr - baseline) / one_pass:.2f} | {score:.4f} |")
    print("\nWhat one fit of the grid costs besides the network (480 cached digits; median of 8):\n")
    print("| built backbones kept in the process (with what fits derive from them) | extractor fit (ms) "
          "| transform of 480 + 120 cached digits (ms) |")
    print("|---|---:|---:|")
    for kept in (_loading._BUILT_MAX, 0):
        _loading._BUILT_MAX = kept
        _loading._BUILT.clear()
        fits = np.array([_fit_and_transform(X) for _ in range(8)])
        print(f"| {kept} | {np.median(fits[:, 0]) * 1000:.0f} | {np.median(fits[:, 1]) * 1000:.0f} |")


def precomputed(X, y):
    extractor = PretrainedFeatureExtractor(image_size=64, layer="stage5", cache=False).fit(X)
    Z = extractor.transform(X)
    return GridSearchCV(TimedLogisticRegression(max_iter=2000), {"C": np.logspace(-2, 2, 5)}, cv=5).fit(Z, y)


def _fit_and_transform(X):
    start = time.perf_counter()
    extractor = PretrainedFeatureExtractor(image_size=64, layer="stage5").fit(X[:480])
    fitted = time.perf_counter()
    extractor.transform(X[:480])
    extractor.transform(X[480:])
    return fitted - start, time.perf_counter() - fitted


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
