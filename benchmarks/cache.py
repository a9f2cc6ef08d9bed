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
    Z = PretrainedFeatureExtractor(image_size=64, layer="stage5", cache=False).fit(X).transform(X)
    search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": np.logspace(-2, 2, 5)}, cv=5).fit(Z, y)
    rows.append(("precompute once, then grid on embeddings", sum(IMAGES) / len(X), time.perf_counter() - start,
                 search.best_score_))
    print(f"Machine: {machine()}")
    print("GridSearchCV, 5 C values x 5 folds (+ refit), 600 digits, image_size=64, layer='stage5'\n")
    print("| run | backbone passes over the data | seconds | best CV score |")
    print("|---|---:|---:|---:|")
    for name, passes, seconds, score in rows:
        print(f"| {name} | {passes:.2f} | {seconds:.1f} | {score:.4f} |")


if __name__ == "__main__":
    main()
