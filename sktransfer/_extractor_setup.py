"""What :class:`PretrainedFeatureExtractor.fit` derives from its backbone, worked out once per process.

A grid search fits the same extractor settings once per candidate and fold
(26 times for 5 candidates x 5 folds). For a named backbone, everything ``fit``
derives from the network (the layers to read, their feature widths, the
preprocessing in use, the digest of the network's class, structure and weights
that keys the embedding cache)
depends only on the settings, so the first fit works it out and stores it
beside the process's kept build of the network
(:func:`~sktransfer.backbones._loading.kept_named`); later fits read it. Their
network is a :class:`LazyBackbone`: copied from the kept build only when an
image has to go through it, so a fit and transforms whose images are all in
the embedding cache copy no network at all. The traced CPU module of a setting
(:func:`~sktransfer.backbones._layer_outputs.optimize_for_cpu`) is kept there
too (:class:`SharedTraces`): the extractors of a process trace it once, and
later ones run it without copying the network.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from ._device import cpu_state, module_device
from ._digest import network_digest, setting_digest
from ._inference import extract
from .backbones._cut import AUTO, probing, resolve_layer, stage_index, stage_outputs
from .backbones._layer_outputs import (
    EMBEDDING,
    CheckedTrace,
    forward_layers,
    optimize_for_cpu,
    resolve_layers,
)
from .backbones._loading import kept_named, load_backbone
from .backbones._pooling import pool
from .data._preprocessing import Preprocessing
from .data._sources import ArraySource


class LazyBackbone:
    """A frozen backbone, made by ``make()`` on first use (thread-safe).

    ``traces``: the :class:`SharedTraces` of the kept build it is a copy of, or
    ``None`` (a module, a fitted estimator, ``adapt_bn``, an unpickled extractor).
    """

    def __init__(self, module=None, make=None, traces=None):
        self._module = module
        self._make = make
        self._lock = threading.Lock()
        self.traces = traces

    @property
    def made(self):
        return self._module is not None

    def get(self):
        if self._module is None:
            with self._lock:
                if self._module is None:
                    # first used inside a transform's inference mode: the copy must stay a normal network
                    with torch.inference_mode(False):
                        self._module = self._make()
                    self._make = None
        return self._module


class LazyBackboneAttribute:
    """``backbone_`` read from the :class:`LazyBackbone` in ``_backbone``; a pickle holds the network."""

    @property
    def backbone_(self):
        """The loaded, frozen network (copied from the process's kept build on first use).

        Read it, do not change it: the embedding cache and the traced module
        shared in the process know the weights as ``fit`` found them.
        """
        try:
            lazy = self.__dict__["_backbone"]
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'backbone_'") from None
        return lazy.get()

    @backbone_.setter
    def backbone_(self, module):
        self._backbone = LazyBackbone(module)
        self.__dict__.pop("_optimized", None)  # traced from the network it replaces
        if "_cache_setting" in self.__dict__:  # cached embeddings are of the network it replaces
            self._cache_setting = setting_digest(self._cache_setting, network_digest(module))

    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ returns the __dict__ itself
        lazy = state.pop("_backbone", None)
        if lazy is not None:  # made now if it was not yet: the pickle must not need this process
            state["backbone_"] = lazy.get()
        state.pop("_optimized", None)  # a traced module belongs to this process
        return cpu_state(state, ["backbone_"])

    def __setstate__(self, state):
        state = dict(state)
        state.setdefault("adapt_bn", False)  # extractors pickled or saved before adapt_bn did not adapt
        if "n_features_out_" in state and "pooling" in state:  # before pooling_, transform read pooling
            state.setdefault("pooling_", state["pooling"])
        backbone = state.pop("backbone_", None)
        super().__setstate__(state)
        if backbone is not None:
            self._backbone = LazyBackbone(backbone)


@dataclass(frozen=True)
class SetupFacts:
    """What a fit derives from the network: the same for every fit with the same settings."""

    backbone_preprocessing: Preprocessing  # the backbone's own, overrides applied
    preprocessing: Preprocessing  # in use (image_size applied)
    layers: tuple
    layer_widths: tuple
    network_digest: str  # the class, structure and weights (the embedding cache's key)
    family: str


def _frozen_copy(template, preprocessing):
    backbone = copy.deepcopy(template)
    backbone.preprocessing = preprocessing
    return backbone.eval().requires_grad_(False)


def setup_backbone(extractor):
    """``(LazyBackbone, SetupFacts or None)`` for a fit of ``extractor``.

    Backbones that are modules or fitted estimators, and ``adapt_bn=True``
    (whose weights depend on the images), are built at every fit and their
    facts are ``None``: :func:`work_out` them once the network is final.
    """
    name = extractor.backbone
    if not isinstance(name, str) or extractor.adapt_bn:
        backbone = load_backbone(name, extractor.weights, extractor.preprocessing, extractor.verbose)
        return LazyBackbone(backbone.eval().requires_grad_(False)), None
    template, notes = kept_named(name, extractor.weights, extractor.verbose)
    key = ("extractor", repr(extractor.preprocessing), extractor.image_size, repr(extractor.layer),
           extractor.pooling)
    facts = notes.get(key)
    traces = notes.setdefault("extractor traces", SharedTraces())
    if facts is not None:
        make = lambda: _frozen_copy(template, facts.backbone_preprocessing)  # noqa: E731
        return LazyBackbone(make=make, traces=traces), facts
    # the first fit with these settings validates the preprocessing overrides and copies the network
    backbone = load_backbone(template, None, extractor.preprocessing).eval().requires_grad_(False)
    facts = notes[key] = work_out(backbone, extractor)
    return LazyBackbone(backbone, traces=traces), facts


def work_out(backbone, extractor):
    """:class:`SetupFacts` of ``backbone`` with ``extractor``'s settings (one 1-image probe on its device)."""
    preprocessing = backbone.preprocessing.replace(image_size=extractor.image_size)
    size = preprocessing.image_size
    auto = isinstance(extractor.layer, str) and extractor.layer == AUTO
    probed = stage_outputs(backbone, size) if auto else None
    layers = resolve_layers(backbone, resolve_layer(backbone, extractor.layer, size, probed))
    if auto:  # one layer, whose output the probe recorded
        (label, _), = layers
        outputs, final = probed
        widths = [pool(final if label == EMBEDDING else outputs[stage_index(label)], extractor.pooling).shape[1]]
    else:
        device = module_device(backbone)
        probe = ArraySource(torch.zeros(1, 3, size, size), (0.0, 1.0))
        with probing(backbone, size):
            widths = [
                extract(lambda x, plan=[layer]: forward_layers(backbone, x, plan, extractor.pooling),
                        probe, preprocessing, device, 1, channels_last=True).shape[1]
                for layer in layers
            ]
    return SetupFacts(backbone.preprocessing, preprocessing, tuple(layers), tuple(widths),
                      network_digest(backbone), backbone.family)


class SharedTraces:
    """The traced CPU modules of one kept build, by layers, pooling and image size.

    At most ``MAX_KEPT`` (the least recently used go first): each holds a copy of
    the weights. A setting whose tracing failed is remembered as ``None``.
    """

    MAX_KEPT = 2

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = OrderedDict()

    def entry(self, key, build):
        """The :class:`TraceEntry` of ``key`` (``None``: not traceable), built by ``build()`` once."""
        with self._lock:  # one build at a time: a second caller of the same key waits for the first
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            entry = self._entries[key] = build()
            while len(self._entries) > self.MAX_KEPT:
                self._entries.popitem(last=False)
            return entry


def trace_key(extractor):
    """What a fitted extractor's traced module depends on besides the weights."""
    return tuple(extractor.layers_), extractor.pooling_, extractor.preprocessing_.image_size


def traced_runner(extractor, batch_size):
    """A :class:`CheckedTrace` for a fitted extractor running batches of ``batch_size``,
    ``None`` if its plan cannot be traced.

    Its module comes from the kept build's :class:`SharedTraces` when the
    network is a copy of one (traced from this extractor's network the first
    time); the eager plan, which only checks and stands in after a failure,
    copies the network when it first runs.
    """
    layers, pooling = extractor.layers_, extractor.pooling_

    def build():
        return optimize_for_cpu(extractor.backbone_, layers, pooling, extractor.preprocessing_.image_size)

    lazy = extractor._backbone
    entry = build() if lazy.traces is None else lazy.traces.entry(trace_key(extractor), build)
    if entry is None:
        return None
    return CheckedTrace(entry, lambda x: forward_layers(lazy.get(), x, layers, pooling), batch_size)
