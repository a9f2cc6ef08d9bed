"""Embedding cache in a grid search: backbone passes and seconds, with and without the cache.

GridSearchCV over 5 values of C x 5 folds of Pipeline(extractor, LogisticRegression) on 600
digits, against the same grid on embeddings computed once beforehand. Usage::

    python benchmarks/cache.py
"""

import time

import numpy as np
from _common import machine
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

import sktransfer._extractor as extractor_module
from sktransfer import PretrainedFeatureExtractor, clear_cache
from sktransfer.backbones import _loading

IMAGES = []
_original = extractor_module.extract


def counting(backbone, source, *args, **kwargs):
    if not (type(source).__name__ == "ArraySource" and len(source) == 1):  # not fit's shape probe
        IMAGES.append(len(source))
    return _original(backbone, source, *args, **kwargs)


extractor_module.extract = counting


def grid(cache, X, y):
    pipe = make_pipeline(PretrainedFeatureExtractor(image_size=64, layer="stage5", cache=cache),
                         LogisticRegression(max_iter=2000))
    return GridSearchCV(pipe, {"logisticregression__C": np.logspace(-2, 2, 5)}, cv=5).fit(X, y)


def main():
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    rows = []
    for cache in (False, True):
        clear_cache()
        IMAGES.clear()
        start = time.perf_counter()
        search = grid(cache, X, y)
        rows.append((f"Pipeline grid, cache={cache}", sum(IMAGES) / len(X), time.perf_counter() - start,
                     search.best_score_))
    IMAGES.clear()
    start = time.perf_counter()
    extractor = PretrainedFeatureExtractor(image_size=64, layer="stage5", cache=False).fit(X)
    Z = extractor.transform(X)
    search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": np.logspace(-2, 2, 5)}, cv=5).fit(Z, y)
    rows.append(("precompute once, then grid on embeddings", sum(IMAGES) / len(X), time.perf_counter() - start,
                 search.best_score_))
    print(f"Machine: {machine()}")
    print("GridSearchCV, 5 C values x 5 folds (+ refit), 600 digits, image_size=64, layer='stage5'\n")
    one_pass = min(_timed(lambda: extractor.transform(X)) for _ in range(3))
    baseline = rows[-1][2]
    print(f"One backbone pass over the 600 digits: {one_pass:.2f} s (best of 3).\n")
    print("| run | backbone passes over the data | seconds | seconds beyond the precomputed grid, in passes "
          "| best CV score |")
    print("|---|---:|---:|---:|---:|")
    for name, passes, seconds, score in rows:
        print(f"| {name} | {passes:.2f} | {seconds:.1f} | {(seconds - baseline) / one_pass:.2f} | {score:.4f} |")
    print("\nWhat one fit of the grid costs besides the network (480 cached digits; median of 8):\n")
    print("| built backbones kept in the process | extractor fit (ms) | transform of 480 + 120 cached digits (ms) |")
    print("|---|---:|---:|")
    for kept in (_loading._BUILT_MAX, 0):
        _loading._BUILT_MAX = kept
        _loading._BUILT.clear()
        fits = np.array([_fit_and_transform(X) for _ in range(8)])
        print(f"| {kept} | {np.median(fits[:, 0]) * 1000:.0f} | {np.median(fits[:, 1]) * 1000:.0f} |")


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
