"""Scale out on Dask: embeddings of large collections, torch threads on workers.

Needs the optional extra: ``pip install "sktransfer[dask]"``.

Grid searches and cross-validation need nothing from this module: run them
under joblib's Dask backend (``with joblib.parallel_config(backend="dask"):``)
and the estimators travel to the workers by pickle. This module adds

* :func:`transform`: a fitted :class:`~sktransfer.PretrainedFeatureExtractor`
  applied to every partition of a Dask DataFrame or Series of image paths, or
  to every block of a Dask array of images. The fitted extractor (weights
  included) is sent once to each worker that needs it; no worker loads
  weights itself.
* :func:`configure_workers` and :class:`TorchThreads`: torch's intra-op
  threads on each worker, set so that the tasks running at once on a machine
  use its cores without oversubscribing them.

See ``docs/scale_out.md`` for the recipes.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import Executor, ProcessPoolExecutor

import joblib
import numpy as np

try:
    import dask
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd
    from distributed import WorkerPlugin, default_client
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sktransfer.dask needs Dask: pip install \"sktransfer[dask]\" "
        "(dask[distributed,dataframe])."
    ) from exc

from sklearn.utils.validation import check_is_fitted

from ._extractor import PretrainedFeatureExtractor

PLUGIN_NAME = "sktransfer-torch-threads"

__all__ = ["TorchThreads", "configure_workers", "transform", "worker_torch_threads"]


# -- torch threads ------------------------------------------------------------
def threads_per_task(cores, task_slots):
    """Torch threads for each of ``task_slots`` tasks sharing ``cores``: at least 1."""
    return max(1, cores // max(1, task_slots))


class TorchThreads(WorkerPlugin):
    """A worker plugin that sets ``torch.set_num_threads`` on every worker.

    By default each worker gets ``cores // task slots``: the cores of its
    machine divided by the threads (task slots) of all workers on that machine,
    at least 1. So two 1-thread workers on 8 cores use 4 torch threads each,
    and one 4-thread worker uses 2 per task. Dask's nanny starts workers with
    ``OMP_NUM_THREADS=1``, which torch reads as 1 thread per worker process
    whatever the machine; without the nanny (``processes=False``) all workers
    share the client's torch threads.

    torch's thread count belongs to each thread that runs torch, so the plugin
    sets it in the worker's event loop (the default for task threads started
    later) and in every thread of the worker's task pool. Register it before
    submitting work: a thread busy with a task when the plugin arrives keeps its
    count. The plugin runs again on workers that join or restart later.

    Parameters
    ----------
    n_threads : int or None, default=None
        Threads for every worker; ``None`` computes them per machine as above.

    Examples
    --------
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> from sktransfer.dask import TorchThreads  # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> client.register_plugin(TorchThreads())  # doctest: +SKIP
    """

    name = PLUGIN_NAME

    def __init__(self, n_threads=None):
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be None or a positive int, got {n_threads!r}.")
        self.n_threads = n_threads

    async def setup(self, worker):
        import torch

        n = self.n_threads
        if n is None:
            identity = await worker.scheduler.identity()
            workers = identity["workers"]
            slots = sum(w["nthreads"] for w in workers.values() if w["host"] == worker.host)
            if worker.address not in workers:  # still registering
                slots += worker.state.nthreads
            n = threads_per_task(joblib.cpu_count(), slots)  # affinity and cgroup quotas included
        torch.set_num_threads(n)  # this thread, and the default for threads started later
        executor = worker.executors.get("default")
        # distributed's own thread pool (not a subclass of concurrent.futures')
        if isinstance(executor, Executor) and not isinstance(executor, ProcessPoolExecutor):
            await _in_every_thread(executor, worker.state.nthreads, lambda: torch.set_num_threads(n))


async def _in_every_thread(executor, n_threads, fn, timeout=30.0):
    """Run ``fn`` once in each of the ``n_threads`` threads of ``executor``.

    Each job waits at a barrier until all have started, so no thread takes two.
    """
    barrier = threading.Barrier(n_threads)

    def job():
        fn()
        try:
            barrier.wait(timeout)
        except threading.BrokenBarrierError:  # a thread was busy with a task
            pass

    await asyncio.gather(*(asyncio.wrap_future(executor.submit(job)) for _ in range(n_threads)))


def _task_torch_threads():
    import torch

    torch.ones(2).sum()  # torch sets up a thread's count at its first operation
    return torch.get_num_threads()


def worker_torch_threads(client):
    """torch's thread count on each worker, as a task running there reads it.

    Parameters
    ----------
    client : distributed.Client

    Returns
    -------
    threads : dict
        Worker address -> torch threads.

    Examples
    --------
    >>> from sktransfer.dask import worker_torch_threads  # doctest: +SKIP
    >>> worker_torch_threads(client)  # doctest: +SKIP
    {'tcp://127.0.0.1:40231': 1, 'tcp://127.0.0.1:37457': 1}
    """
    return {
        address: client.submit(_task_torch_threads, workers=[address], pure=False).result()
        for address in client.run(os.getpid)  # every worker's address
    }


def configure_workers(client, n_threads=None):
    """Set torch's threads on every worker of ``client`` (see :class:`TorchThreads`).

    Parameters
    ----------
    client : distributed.Client
    n_threads : int or None, default=None
        Threads per worker; ``None``: cores of the machine divided by the task
        slots of all its workers.

    Returns
    -------
    threads : dict
        Worker address -> the torch thread count that a task on it now sees.

    Examples
    --------
    >>> from distributed import Client, LocalCluster  # doctest: +SKIP
    >>> from sktransfer.dask import configure_workers  # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> configure_workers(client)  # doctest: +SKIP
    {'tcp://127.0.0.1:40231': 4, 'tcp://127.0.0.1:37457': 4}
    """
    client.register_plugin(TorchThreads(n_threads), name=PLUGIN_NAME)
    return worker_torch_threads(client)


# -- extraction -----------------------------------------------------------------
def _embed_block(block, extractor):
    return extractor.transform(block) if len(block) else np.empty((0, extractor.n_features_out_), np.float32)


def _embed_partition(part, extractor, columns):
    return pd.DataFrame(_embed_block(part, extractor), index=part.index, columns=columns)


def transform(extractor, data, *, column=None):
    """Embeddings of a Dask collection, computed partition by partition on the workers.

    Parameters
    ----------
    extractor : PretrainedFeatureExtractor
        A fitted extractor. Fit it on the client first (on a few images: fit
        only loads the weights and, for float arrays, learns the pixel range);
        it travels to the workers with its weights, once per worker.
    data : dask.dataframe.Series, dask.dataframe.DataFrame or dask.array.Array
        Image paths (a Series, or the DataFrame column named by ``column``;
        a one-column DataFrame needs no name), or an array of images or pixel
        rows chunked along the first axis only (other axes are merged).
    column : str or None, default=None
        The column of paths when ``data`` is a DataFrame with several columns.

    Returns
    -------
    embeddings : dask.dataframe.DataFrame or dask.array.Array
        For paths, a DataFrame with the index and divisions of ``data`` and
        the columns ``extractor.get_feature_names_out()``; for arrays, a
        float32 array of shape ``(n_images, extractor.n_features_out_)``.
        Equal to ``extractor.transform`` on the whole collection; with
        ``cache_dir`` the workers share the extractor's disk cache.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd  # doctest: +SKIP
    >>> from sktransfer import PretrainedFeatureExtractor  # doctest: +SKIP
    >>> from sktransfer.dask import transform  # doctest: +SKIP
    >>> paths = dd.from_pandas(pd.Series(files, name="path"), npartitions=64)  # doctest: +SKIP
    >>> ext = PretrainedFeatureExtractor(cache_dir="/shared/emb").fit(files[:1])  # doctest: +SKIP
    >>> emb = transform(ext, paths).compute()  # doctest: +SKIP
    """
    if not isinstance(extractor, PretrainedFeatureExtractor):
        raise TypeError(
            f"extractor must be a fitted PretrainedFeatureExtractor, got {type(extractor).__name__}."
        )
    check_is_fitted(extractor, "n_features_out_", msg=(
        "This PretrainedFeatureExtractor is not fitted. Fit it on the client first, e.g. "
        "extractor.fit(paths[:1]): the fitted extractor carries its weights to the workers."
    ))
    if isinstance(data, da.Array):
        return _transform_array(extractor, data)
    if isinstance(data, dd.DataFrame):
        if column is None:
            if len(data.columns) != 1:
                raise ValueError(
                    f"data has {len(data.columns)} columns; name the column of image paths with "
                    "column=..., or pass that column (a Series)."
                )
            column = data.columns[0]
        elif column not in data.columns:
            raise ValueError(f"column {column!r} is not in data; its columns are {list(data.columns)}.")
        data = data[column]
    elif column is not None:
        raise ValueError("column= applies only to a Dask DataFrame.")
    if not isinstance(data, dd.Series):
        raise TypeError(
            "data must be a dask.dataframe Series or DataFrame of image paths, or a dask.array "
            f"of images; got {type(data).__name__}. Wrap a list with "
            "dask.dataframe.from_pandas(pandas.Series(paths), npartitions=...)."
        )
    columns = list(extractor.get_feature_names_out())
    meta = pd.DataFrame(np.empty((0, len(columns)), dtype=np.float32), columns=columns)
    return data.map_partitions(_embed_partition, _ship(extractor), columns, meta=meta)


def _ship(extractor):
    """The extractor as a task argument: scattered once to every worker of the
    default ``distributed`` client (not embedded in each task of the graph);
    the object itself for Dask's local schedulers, which share this process."""
    try:
        client = default_client()
    except ValueError:
        return extractor
    return client.scatter(extractor, broadcast=True, hash=True)


def _transform_array(extractor, data):
    if data.ndim < 2:
        raise ValueError(f"A dask array of images needs at least 2 dimensions, got shape {data.shape}.")
    data = data.rechunk({axis: -1 for axis in range(1, data.ndim)})
    blocks = data.to_delayed().reshape(-1)
    shipped, width = _ship(extractor), extractor.n_features_out_
    parts = [
        da.from_delayed(dask.delayed(_embed_block)(block, shipped), shape=(rows, width), dtype=np.float32)
        for block, rows in zip(blocks, data.chunks[0])
    ]
    return da.concatenate(parts, axis=0)
