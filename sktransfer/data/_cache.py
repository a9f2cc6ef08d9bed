"""Embedding cache: repeated transforms of the same images reuse their embeddings.

Keys are per image (so the folds of a cross-validation, which transform
subsets of the same images, hit the cache) and combine

* the image content (bytes, shape and dtype of arrays; path, size and
  modification time of files; pixels of PIL images), and
* every setting that changes the output: a digest of the backbone weights,
  the layers, pooling, preprocessing, input shape and pixel range.

The in-memory store is one per process, shared by all extractors (clones made
by GridSearchCV included), least-recently-used, bounded in bytes. An optional
folder on disk is shared by processes (``n_jobs>1``): one ``.npy`` file per
embedding, written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from collections import OrderedDict

import numpy as np
import torch

from .._digest import array_digest, row_digests
from ._sources import ArraySource, SubsetSource, is_pil

DEFAULT_MAX_BYTES = 1 << 30


class MemoryLRU:
    """A least-recently-used mapping bounded by the bytes of its arrays."""

    def __init__(self, max_bytes=DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.data = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.lock = threading.Lock()

    def get(self, key):
        return self.get_many([key])[0]

    def put(self, key, value, max_bytes=None):
        limit = self.max_bytes if max_bytes is None else max_bytes
        if value.nbytes > limit:
            return
        with self.lock:
            if key in self.data:
                return
            self.data[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > limit:
                _, old = self.data.popitem(last=False)
                self.nbytes -= old.nbytes

    def get_many(self, keys):
        """Values of ``keys`` (``None`` for misses and ``None`` keys), under one lock."""
        with self.lock:
            values = [None if key is None else self.data.get(key) for key in keys]
            for key, value in zip(keys, values):
                if value is not None:
                    self.data.move_to_end(key)
            found = sum(value is not None for value in values)
            self.hits += found
            self.misses += sum(key is not None for key in keys) - found
        return values

    def clear(self):
        with self.lock:
            self.data.clear()
            self.nbytes = self.hits = self.misses = 0


_MEMORY = MemoryLRU()


def clear_cache():
    """Empty this process's in-memory embedding cache.

    Examples
    --------
    >>> from sktransfer import clear_cache
    >>> clear_cache()
    """
    _MEMORY.clear()


def cache_info():
    """Hits, misses, entries and bytes of this process's in-memory embedding cache.

    Returns
    -------
    info : dict

    Examples
    --------
    >>> from sktransfer import cache_info
    >>> sorted(cache_info())
    ['bytes', 'entries', 'hits', 'misses']
    """
    return {"hits": _MEMORY.hits, "misses": _MEMORY.misses, "entries": len(_MEMORY.data), "bytes": _MEMORY.nbytes}


def item_keys(source):
    """One content key per image of an :class:`~sktransfer.data._sources.ImageSource`."""
    if isinstance(source, ArraySource):
        data = source.data
        if isinstance(data, torch.Tensor) and data.device.type == "cpu" and data.dtype != torch.bfloat16:
            data = data.detach().numpy()  # a view: the same keys as the equal numpy array
        if isinstance(data, np.ndarray):
            return row_digests(data)
        return [array_digest(data[i]) for i in range(len(source))]
    keys = []
    for item in source.items:
        if isinstance(item, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(item))
            try:
                stat = os.stat(path)
                keys.append(f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}")
            except OSError:
                keys.append(None)  # missing: never cached, the decoder raises the clear error
        elif is_pil(item):
            palette = item.getpalette() if item.mode in ("P", "PA") else None  # the colours of the indices
            keys.append(array_digest(np.asarray(item)) + item.mode
                        + (array_digest(np.asarray(palette, dtype=np.int64)) if palette else ""))
        elif isinstance(item, torch.Tensor):  # channels first, as the rows of an array source
            keys.append(array_digest(item))
        else:  # a numpy image in a list is read channels last: its bytes mean other pixels
            keys.append("hwc:" + array_digest(item))
    return keys


class DiskCache:
    """Embeddings as ``<folder>/<setting digest>/<image key>.npy`` files."""

    def __init__(self, folder, setting):
        self.folder = os.path.join(os.fspath(folder), setting)
        self.unwritable = False

    def _path(self, key):
        name = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return os.path.join(self.folder, name[:2], name + ".npy")

    def get(self, key):
        try:
            return np.load(self._path(key), allow_pickle=False)
        except (OSError, ValueError):
            return None

    def put(self, key, value):
        """Write one embedding; a folder that cannot be written (read-only, full) warns once per
        transform and is then left alone: the embeddings are computed already, and the memory
        cache keeps them."""
        if self.unwritable:
            return
        path = self._path(key)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as fh:
                np.save(fh, value, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:
            self.unwritable = True
            with contextlib.suppress(OSError):
                os.remove(tmp)
            warnings.warn(f"cache_dir {self.folder!r} cannot be written ({type(exc).__name__}: {exc}); "
                          "embeddings are not kept on disk this time. Fix the folder or set cache_dir=None.",
                          RuntimeWarning, stacklevel=2)


def cached_transform(source, setting, compute, max_bytes, folder=None):
    """Embeddings of ``source``, computing only the images no cache holds.

    ``compute(subset_source) -> ndarray`` runs the network.
    """
    keys = [None if k is None else f"{setting}:{k}" for k in item_keys(source)]
    disk = DiskCache(folder, setting) if folder is not None else None
    found = {}
    missing = []
    for i, (key, value) in enumerate(zip(keys, _MEMORY.get_many(keys))):
        if value is None and key is not None and disk is not None:
            value = disk.get(key)
            if value is not None:
                _MEMORY.put(key, value, max_bytes)
        if value is None:
            missing.append(i)
        else:
            found[i] = value
    computed = compute(SubsetSource(source, missing)) if missing else None
    if computed is not None:
        for row, i in enumerate(missing):
            if keys[i] is None:
                continue
            value = computed[row].copy()
            _MEMORY.put(keys[i], value, max_bytes)
            if disk is not None:
                disk.put(keys[i], value)
    width = computed.shape[1] if computed is not None else next(iter(found.values())).shape[0]
    out = np.empty((len(keys), width), dtype=np.float32)
    for i, value in found.items():
        out[i] = value
    if computed is not None:
        out[missing] = computed
    return out
