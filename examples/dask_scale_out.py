"""Scale out on Dask: embed a folder of image files and run a grid search on a cluster.

A ``LocalCluster`` (two worker processes on this machine) stands in for a real cluster:
replace it with ``Client("tcp://scheduler:8786")`` and nothing else changes. Needs the extra
``pip install "sktransfer[dask]"``.

1. The digits, written as PNG files, become a Dask DataFrame of paths.
   ``sktransfer.dask.transform`` embeds it partition by partition on the workers, and a
   shared ``cache_dir`` makes the second pass read the embeddings from disk.
2. ``GridSearchCV`` over ``freeze_depth`` x ``reg_lambda`` runs its fits on the workers through
   joblib's Dask backend.
"""

import os
import tempfile
import time

import dask.dataframe as dd
import joblib
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor
from sktransfer.dask import configure_workers, transform

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
# the fast mode (tests) trains max_epochs epochs, without the default minimum of 100 optimizer steps
BUDGET = dict(min_steps=0) if FAST else {}


def write_digits(folder, n):
    digits = load_digits()
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"digit_{i:04d}.png")
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(path)
        paths.append(path)
    return pd.DataFrame({"path": paths, "label": digits.target[:n]})


def main():
    n_files, n_fit, epochs = (200, 120, 1) if FAST else (1797, 600, 5)
    with tempfile.TemporaryDirectory() as folder, \
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        print("torch threads per worker:", configure_workers(client))

        # 1. embeddings of a collection of files, computed on the workers
        files = write_digits(folder, n_files)
        ddf = dd.from_pandas(files, npartitions=4)
        extractor = PretrainedFeatureExtractor(
            image_size=32, layer="stage5", cache_dir=os.path.join(folder, "embeddings"),
        ).fit(files["path"][:1])  # loads the weights, here on the client; they travel with it
        start = time.perf_counter()
        embeddings = transform(extractor, ddf, column="path").compute()
        first = time.perf_counter() - start
        start = time.perf_counter()
        transform(extractor, ddf, column="path").compute()  # read back from the shared disk cache
        second = time.perf_counter() - start
        print(f"{len(embeddings)} files embedded on the workers in {first:.1f} s; "
              f"again from the disk cache in {second:.1f} s")
        scores = cross_val_score(LogisticRegression(max_iter=2000), embeddings, files.loc[embeddings.index, "label"])
        print(f"LogisticRegression on the stage-5 embeddings: 5-fold accuracy {scores.mean():.3f}")

        # 2. a grid search whose fits run on the workers
        X, y = load_digits(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(
            X[:n_fit], y[:n_fit], test_size=0.25, stratify=y[:n_fit], random_state=0)
        search = GridSearchCV(
            FineTuneClassifier(image_size=32, max_epochs=epochs, random_state=0, **BUDGET),
            {"freeze_depth": [2, "all"], "reg_lambda": [0.0, 0.1]}, cv=2, n_jobs=-1,
        )
        start = time.perf_counter()
        with joblib.parallel_config(backend="dask"):
            search.fit(X_train, y_train)
        print(f"grid search of {len(search.cv_results_['params'])} candidates x 2 folds on the workers "
              f"in {time.perf_counter() - start:.1f} s; best {search.best_params_}")
        print(f"best candidate, refitted on the client: test accuracy {search.score(X_test, y_test):.3f}")


if __name__ == "__main__":  # the workers are new processes that import this file
    main()
