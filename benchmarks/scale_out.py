"""Scale-out on one machine: one process against a Dask LocalCluster.

Part A embeds ``--n`` JPEG files (``PretrainedFeatureExtractor()``, native 224 px,
``cache=False``) three ways:

* one process (torch uses every core);
* ``sktransfer.dask.transform`` on ``LocalCluster(n_workers=cores, threads_per_worker=1)``,
  each worker with Dask's default of one torch thread;
* the same on ``LocalCluster(n_workers=1, threads_per_worker=1)`` after
  ``configure_workers`` (torch threads = cores).

Part B runs ``GridSearchCV`` over ``freeze_depth`` x ``reg_lambda`` of a
``FineTuneClassifier`` on digits, ``n_jobs=1`` in one process against joblib's Dask
backend on ``LocalCluster(n_workers=cores, threads_per_worker=1)``.

Cluster start-up is timed apart. Usage::

    python benchmarks/scale_out.py [--n 1000] [--skip-grid]
"""

import argparse
import tempfile
import time

import joblib
import numpy as np
from _common import machine
from files import write_files


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def extraction(paths, cores):
    import dask.dataframe as dd
    import pandas as pd
    import torch
    from distributed import Client, LocalCluster

    from sktransfer import PretrainedFeatureExtractor
    from sktransfer.dask import configure_workers, transform, worker_torch_threads

    ext = PretrainedFeatureExtractor(cache=False).fit(paths[:1])
    reference, seconds = timed(lambda: ext.transform(paths))
    rows = [("one process", f"{torch.get_num_threads()} torch threads", 0.0, seconds, 0.0)]
    series = pd.Series(paths, name="path")
    for label, n_workers, configure in [
        (f"Dask, {cores} workers x 1 thread", cores, False),
        ("Dask, 1 worker x 1 thread, configure_workers", 1, True),
    ]:
        (cluster, client), start = timed(lambda: _cluster(LocalCluster, Client, n_workers))
        with cluster, client:
            threads = configure_workers(client) if configure else worker_torch_threads(client)
            # partitions of >= 128 images, so that workers use the traced CPU model as the one
            # process does; the warm-up builds it on each worker (torch imported, extractor received)
            lazy = transform(ext, dd.from_pandas(series, npartitions=max(1, len(paths) // 250)))
            transform(ext, dd.from_pandas(series[:128 * n_workers], npartitions=n_workers)).compute()
            out, seconds = timed(lambda: lazy.compute().to_numpy())
        diff = float(np.abs(out - reference).max())
        rows.append((label, f"{sorted(set(threads.values()))} torch threads per worker", start, seconds, diff))
    print(f"\n### A. Embedding {len(paths)} JPEG files at 224 px\n")
    print("| run | threads | cluster start (s) | seconds | images/s | max abs diff to one process |")
    print("|---|---|---:|---:|---:|---:|")
    for label, threads, start, seconds, diff in rows:
        print(f"| {label} | {threads} | {start:.1f} | {seconds:.1f} | {len(paths) / seconds:.1f} | {diff:.1e} |")


def _cluster(LocalCluster, Client, n_workers):
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=":0", silence_logs=40)
    return cluster, Client(cluster)


def grid(cores):
    from distributed import Client, LocalCluster
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV

    from sktransfer import FineTuneClassifier

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    search = GridSearchCV(
        FineTuneClassifier(image_size=32, max_epochs=3, batch_size=32, random_state=0),
        {"freeze_depth": [2, "all"], "reg_lambda": [0.0, 0.1]}, cv=3, n_jobs=1, refit=False,
    )
    import torch

    rows = []
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        scores, seconds = timed(lambda: search.fit(X, y).cv_results_["mean_test_score"].copy())
        rows.append((f"one process, n_jobs=1, {threads} torch thread(s)", 0.0, seconds, scores))
    (cluster, client), start = timed(lambda: _cluster(LocalCluster, Client, cores))
    with cluster, client, joblib.parallel_config(backend="dask"):
        search.set_params(n_jobs=-1)
        scores, seconds = timed(lambda: search.fit(X, y).cv_results_["mean_test_score"].copy())
        rows.append((f"Dask, {cores} workers x 1 thread (1 torch thread each)", start, seconds, scores))
    print("\n### B. GridSearchCV, 4 candidates x 3 folds, 300 digits at 32 px, 3 epochs\n")
    print("| run | cluster start (s) | seconds | mean test scores |")
    print("|---|---:|---:|---|")
    for label, start, seconds, scores in rows:
        print(f"| {label} | {start:.1f} | {seconds:.1f} | {np.round(scores, 3).tolist()} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--skip-grid", action="store_true")
    args = parser.parse_args()
    cores = joblib.cpu_count()
    print(f"Machine: {machine()}; {cores} cores")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_files(folder, args.n, size=256)
        extraction(paths, cores)
    if not args.skip_grid:
        grid(cores)


if __name__ == "__main__":
    main()
