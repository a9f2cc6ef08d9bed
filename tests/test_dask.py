"""Scale-out on a Dask LocalCluster (localhost): the same answers as one process.

The workers are separate processes that get the estimators by pickle. Their
network is cut (only loopback connections, which Dask itself uses, go through),
so any weight download on a worker would fail these tests.
"""

import os

import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")
da = pytest.importorskip("dask.array")
pd = pytest.importorskip("pandas")

import joblib
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline

import sktransfer.dask as skdask
from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor, clear_cache

N_WORKERS = 2


def _cut_network():
    """Refuse every connection that does not go to this machine."""
    import socket
    import urllib.request

    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"network cut for this test: {address!r}")
        return real_connect(self, address)

    def urlopen(url, *args, **kwargs):
        raise OSError(f"network cut for this test: {url!r}")

    socket.socket.connect = connect
    urllib.request.urlopen = urlopen
    os.environ["HF_HUB_OFFLINE"] = "1"


def _try_download():
    import urllib.request

    try:
        urllib.request.urlopen("https://download.pytorch.org/models/resnet18-f37072fd.pth")
    except OSError as exc:
        return str(exc)
    return "downloaded"


def test_local_scheduler_needs_no_client(digits):
    """First in this file: no distributed client exists yet, the extractor is passed as is."""
    with pytest.raises(ValueError):
        distributed.default_client()
    images = digits[0][:20]
    ext = PretrainedFeatureExtractor(image_size=32, layer="stage5", cache=False).fit(images)
    got = skdask.transform(ext, da.from_array(images, chunks=(10, 8, 8))).compute(scheduler="sync")
    np.testing.assert_array_equal(got, np.vstack([ext.transform(images[:10]), ext.transform(images[10:])]))


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=":0",
        silence_logs=40,
    )
    with cluster, distributed.Client(cluster) as c:
        c.run(_cut_network)
        yield c


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory, digits):
    """36 digit images as PNG files, 32 px."""
    images, _, target = digits
    folder = tmp_path_factory.mktemp("digit_files")
    paths = []
    for i in range(36):
        img = Image.fromarray((images[i] * 255 / 16).astype(np.uint8)).resize((32, 32))
        path = folder / f"{i:02d}.png"
        img.save(path)
        paths.append(str(path))
    return paths, target[:36]


def test_workers_cannot_download(client):
    assert all("network cut" in msg for msg in client.run(_try_download).values())


# -- grid search and cross-validation under joblib's Dask backend -------------------
def test_grid_search_on_dask_equals_one_process(client, digits):
    _, table, target = digits
    X, y = table[:60], target[:60] % 3
    search = GridSearchCV(
        FineTuneClassifier(image_size=32, max_epochs=2, batch_size=16, freeze_depth=2, min_steps=0, random_state=0),
        {"freeze_depth": [2, 3], "reg_lambda": [0.0, 1.0]}, cv=KFold(2, shuffle=True, random_state=0),
        n_jobs=-1,
    )
    with torch_threads(1):  # the workers' arithmetic (one thread each)
        local = search.fit(X, y)
        local_scores = local.cv_results_["mean_test_score"].copy()
        local_proba = local.predict_proba(X)
    # the refit runs here, on the client, so it too uses one thread
    with torch_threads(1), joblib.parallel_config(backend="dask"):
        remote = GridSearchCV(**search.get_params(deep=False)).fit(X, y)
    np.testing.assert_array_equal(remote.cv_results_["mean_test_score"], local_scores)
    for k in range(2):
        np.testing.assert_array_equal(remote.cv_results_[f"split{k}_test_score"], local.cv_results_[f"split{k}_test_score"])
    assert remote.best_params_ == local.best_params_
    with torch_threads(1):
        np.testing.assert_array_equal(remote.predict_proba(X), local_proba)


def test_cross_val_score_on_dask_equals_one_process(client, digits):
    _, table, target = digits
    X, y = table[:90], target[:90]
    pipe = make_pipeline(PretrainedFeatureExtractor(image_size=32, layer="stage5"), LogisticRegression(max_iter=300))
    with torch_threads(1):
        clear_cache()
        local = cross_val_score(pipe, X, y, cv=3)
    with joblib.parallel_config(backend="dask"):
        remote = cross_val_score(pipe, X, y, cv=3, n_jobs=-1)
    np.testing.assert_array_equal(remote, local)
    assert local.mean() > 0.6  # real embeddings, not a degenerate answer


# -- torch threads on workers ---------------------------------------------------------
def test_torch_threads_per_worker(client):
    # Dask's nanny starts workers with OMP_NUM_THREADS=1, which torch follows
    before = skdask.worker_torch_threads(client)
    assert set(before.values()) == {1}
    try:
        # the task threads have run torch already (earlier tests): they must follow too
        assert skdask.configure_workers(client, n_threads=2) == dict.fromkeys(before, 2)
        assert skdask.worker_torch_threads(client) == dict.fromkeys(before, 2)
        expected = max(1, joblib.cpu_count() // N_WORKERS)  # both workers share this machine
        assert skdask.configure_workers(client) == dict.fromkeys(before, expected)
        assert skdask.worker_torch_threads(client) == dict.fromkeys(before, expected)
    finally:
        skdask.configure_workers(client, n_threads=1)  # as the other tests expect
    with pytest.raises(ValueError, match="positive int"):
        skdask.TorchThreads(0)


def test_threads_per_task():
    assert skdask.threads_per_task(8, 2) == 4
    assert skdask.threads_per_task(8, 3) == 2
    assert skdask.threads_per_task(2, 4) == 1
    assert skdask.threads_per_task(4, 0) == 4


# -- extraction of a collection ---------------------------------------------------------
def _per_block(ext, X, sizes):
    """One process, the same blocks as the workers, one thread."""
    with torch_threads(1):
        return np.vstack([ext.transform(X[a:a + n]) for a, n in zip(np.cumsum([0, *sizes[:-1]]), sizes)])


# A 1-thread CPU convolution picks its kernel by batch size: blocks of 12 images
# differ from one batch of 36 in the 6th digit, never more. Computed on the same
# blocks, the workers' output equals this process's to the bit.
ROUNDING = {"rtol": 1e-5, "atol": 1e-4}


def test_paths_dataframe_equals_one_process(client, digit_files):
    paths, labels = digit_files
    frame = pd.DataFrame({"path": paths, "label": labels}, index=pd.RangeIndex(100, 136))
    ddf = dd.from_pandas(frame, npartitions=3)
    ext = PretrainedFeatureExtractor(image_size=32, layer="stage5", cache=False).fit(paths[:1])
    lazy = skdask.transform(ext, ddf, column="path")
    assert list(lazy.columns) == list(ext.get_feature_names_out())
    got = lazy.compute()
    pd.testing.assert_index_equal(got.index, frame.index)
    sizes = [len(p) for p in ddf.partitions]
    np.testing.assert_array_equal(got.to_numpy(), _per_block(ext, paths, sizes))
    whole = ext.transform(paths)
    np.testing.assert_allclose(got.to_numpy(), whole, **ROUNDING)
    # a Series of paths, filtered on the workers: the same rows, and two empty partitions
    some = ddf["path"][(ddf["label"] != 3) & (ddf.index < 112)]
    assert [len(p) for p in some.partitions][1:] == [0, 0]
    got = skdask.transform(ext, some).compute()
    keep = (labels != 3) & (frame.index < 112)
    pd.testing.assert_index_equal(got.index, frame.index[keep])
    np.testing.assert_allclose(got.to_numpy(), whole[keep], **ROUNDING)


def test_dask_array_equals_one_process(client, digits):
    images, _, _ = digits
    X = images[:50]
    ext = PretrainedFeatureExtractor(image_size=32, layer="stage5", cache=False).fit(X)
    lazy = skdask.transform(ext, da.from_array(X, chunks=(12, 4, 8)))  # other axes are merged
    assert lazy.shape == (50, ext.n_features_out_) and lazy.dtype == np.float32
    got = lazy.compute()
    np.testing.assert_array_equal(got, _per_block(ext, X, [12, 12, 12, 12, 2]))
    np.testing.assert_allclose(got, ext.transform(X), **ROUNDING)


def test_workers_share_the_disk_cache(client, digit_files, tmp_path, monkeypatch):
    paths, _ = digit_files
    ext = PretrainedFeatureExtractor(image_size=32, cache_dir=str(tmp_path / "emb")).fit(paths[:1])
    from_workers = skdask.transform(ext, dd.from_pandas(pd.Series(paths), npartitions=4)).compute()
    assert len(list((tmp_path / "emb").rglob("*.npy"))) == len(paths)
    # here, with an empty memory cache and a network that would fail, every row comes from disk
    clear_cache()
    monkeypatch.setattr(ext, "_run", lambda *a, **k: pytest.fail("computed instead of read from the cache"))
    np.testing.assert_array_equal(ext.transform(paths), from_workers.to_numpy())


def test_fitted_extractor_carries_its_weights(client, digit_files):
    """Workers never load weights for a fitted extractor: it arrives with them."""
    paths, _ = digit_files

    def forbid_loading():
        import sktransfer._extractor

        def refuse(*args, **kwargs):
            raise RuntimeError("a worker tried to load weights")

        sktransfer._extractor.load_backbone = refuse

    ext = PretrainedFeatureExtractor(image_size=32, cache=False).fit(paths[:1])
    client.run(forbid_loading)
    try:
        got = skdask.transform(ext, dd.from_pandas(pd.Series(paths), npartitions=2)).compute()
    finally:
        client.run(_restore_loading)
    np.testing.assert_array_equal(got.to_numpy(), _per_block(ext, paths, [18, 18]))


def _restore_loading():
    import sktransfer._extractor
    import sktransfer.backbones._loading

    sktransfer._extractor.load_backbone = sktransfer.backbones._loading.load_backbone


def test_transform_errors(client, digit_files):
    paths, _ = digit_files
    ddf = dd.from_pandas(pd.DataFrame({"path": paths, "other": paths}), npartitions=2)
    with pytest.raises(ValueError, match="not fitted. Fit it on the client"):
        skdask.transform(PretrainedFeatureExtractor(), ddf["path"])
    ext = PretrainedFeatureExtractor(image_size=32).fit(paths[:1])
    with pytest.raises(ValueError, match="2 columns; name the column"):
        skdask.transform(ext, ddf)
    with pytest.raises(ValueError, match="'nope' is not in data"):
        skdask.transform(ext, ddf, column="nope")
    with pytest.raises(TypeError, match="dask.dataframe Series"):
        skdask.transform(ext, paths)
    with pytest.raises(TypeError, match="fitted PretrainedFeatureExtractor"):
        skdask.transform(LogisticRegression(), ddf["path"])


class torch_threads:
    """Run a block with ``n`` torch threads, as the workers do."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)
