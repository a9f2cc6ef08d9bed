"""PretrainedFeatureExtractor: a frozen pretrained CNN as a scikit-learn transformer."""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted
from torch import nn

from ._device import amp_dtype, module_device, resolve_device
from ._digest import setting_digest
from ._docstrings import DOCS_URL
from ._extractor_setup import (
    LazyBackboneAttribute,
    setup_backbone,
    traced_runner,
    work_out,
)
from ._inference import extract, gpu_batch_size, power_of_two_below
from ._persistence import SaveMixin
from ._progress import progress_bar
from ._validation import Device, Number, PixelRange
from .backbones._layer_outputs import forward_layers
from .backbones._pooling import POOLINGS
from .backbones._timm import DEFAULT_BACKBONE
from .data._batches import PreparedImages, resolve_num_workers
from .data._cache import DEFAULT_MAX_BYTES, cached_transform
from .data._preprocessing import Preprocessing
from .data._sources import as_images, learn_pixel_range
from .training._adaptation import adapt_batchnorm

OPTIMIZE_MIN_IMAGES = 128
WORKERS_MIN_PATHS = 64  # num_workers="auto" starts DataLoader workers only for more paths than this
ADAPT_BN_BATCH = 64  # AdaBN's statistics depend on the batches: the same ones on every device


class PretrainedFeatureExtractor(LazyBackboneAttribute, SaveMixin, TransformerMixin, BaseEstimator):
    """Embeddings from a frozen pretrained CNN, as a scikit-learn transformer.

    ``fit`` loads the backbone (nothing is learned from the images except the
    value range of float inputs; a named backbone is copied from the one this
    process built before, when an image first needs it); ``transform`` runs it in ``eval()`` mode
    under ``torch.inference_mode`` batch by batch and returns float32 features.

    Parameters
    ----------
    backbone : str, torch.nn.Module or fitted estimator, default="efficientnet_lite0"
        ``"efficientnet_lite0"`` (embedded ImageNet weights, offline), a
        torchvision model name (``"resnet18"``, ``"convnext_tiny"``, ...),
        ``"timm/<name>"``, a ``torch.nn.Module``, or a fitted
        :class:`FineTuneClassifier` (transfer a fine-tuned source model).
    weights : "DEFAULT", str, path or None, default="DEFAULT"
        Pretrained weights: ``"DEFAULT"``, a torchvision weights name
        (``"IMAGENET1K_V2"``), a timm tag, ``None`` (random initialisation) or
        the path of a state-dict file (loaded with ``weights_only=True``).
        Named weights missing from the local cache are downloaded into it on
        first use (torch-hub's or Hugging Face's, as torchvision and timm do);
        with ``SKTRANSFER_OFFLINE=1``, or when the download fails, they raise
        :class:`~sktransfer.WeightsNotFoundError` saying what to download and where.
    layer : "auto", None, str or list of str, default="auto"
        ``"auto"``: the pooled last feature map at the backbone's native size,
        and on small inputs, whose last maps shrink to 2x2 or 1x1 pixels, the
        deepest stage whose map is still at least 4x4 (for Lite0: ``"stage5"``
        at 64 px, ``"stage3"`` at 32 px): by 0.1-0.6 accuracy above the last
        map on three image sets (user guide); ``layers_`` tells. A backbone cut
        by fine-tuning is kept whole while its last map is at least 3x3.
        ``None``: the pooled last feature map (penultimate embedding) always.
        ``"logits"``: the pretrained model's own output (ImageNet logits).
        ``"stageK"``: the output of backbone stage K. Any module name of the
        model (``"layer3"``, ``"features.4"``, ``"blocks.2"``). A list
        concatenates several.
    pooling : {"avg", "max", "avgmax", "catavgmax", "gem", "token"} or None, default="avg"
        How feature maps become vectors; ``None`` flattens.
    image_size : int or None, default=None
        Side of the square input the images are resized to (antialiased);
        ``None`` uses the backbone's native size.
    input_shape : tuple or None, default=None
        Shape of one image when ``X`` is a 2-D table, e.g. ``(8, 8)`` or
        ``(28, 28, 1)``. ``None``: a perfect-square number of columns is a square
        grey image, anything else a 1-pixel-high strip.
    pixel_range : "auto" or (lo, hi), default="auto"
        Black and white values of float (and non-uint8/16 integer) inputs.
        ``"auto"`` takes [0, 1] when the training data lies in it, else
        ``(min(0, data min), data max)`` learned at ``fit``. uint8 and uint16
        always use their full range; files and PIL images are 8-bit.
    preprocessing : dict, Preprocessing or None, default=None
        Overrides of the backbone's mean, std, interpolation or native size
        (needed for a custom ``nn.Module`` not trained on ImageNet statistics).
    batch_size : "auto" or int, default="auto"
        Images per forward pass (memory is bounded by it). ``"auto"``: on a GPU
        256 up to 256 px, halved as the pixels double (64 at 512 px, and for
        arrays, resized on the GPU, 64 from 1024 px of their own; at least 16);
        on the CPU, 8 at 224 px, 16 at 96-128 px, 64 at 64 px and below
        (docs/benchmarks.md). ``adapt_bn`` then uses batches of 64.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default="auto"
        ``"auto"`` uses CUDA when present (bf16 autocast; fp16 on V100 and T4), else the CPU.
    num_workers : "auto" or int, default="auto"
        Worker processes (``torch.utils.data.DataLoader``) that decode and
        resize image files while the network runs. ``"auto"``: for lists of
        more than one batch (and 64) of paths on machines with 4 or more cores, half
        the cores (at most 4); otherwise 0, which decodes in the main process
        (on 2 cores a worker only competes with the network for them). Arrays
        are never sent to workers.
    optimize : "auto", bool, default="auto"
        On the CPU, run a traced and frozen copy of the network (one graph,
        BatchNorm folded, compiled into fused oneDNN kernels; embeddings equal
        the eager ones to cosine >= 0.9999, checked on the first batch of each
        size, with a fall back to eager execution). Every batch runs at
        ``batch_size`` (a short one padded), so embeddings do not depend on how
        images are split. Building and compiling take about 0.3 s once (Lite0);
        extractors of a process with the same backbone and setting share one.
        ``"auto"``: for a transform of 128 images or more, then for any;
        ``True`` always, ``False`` never. GPUs run eagerly with autocast.
    cache : bool, default=True
        Reuse embeddings of images seen before (cross-validation folds, grid
        searches, refits): a per-process, least-recently-used memory cache
        shared by all extractors, keyed by image content plus a digest of the
        network (class, structure, weights) and of every setting that changes
        the output. See
        :func:`cache_info` and :func:`clear_cache`.
    cache_dir : str or None, default=None
        A folder that also stores embeddings on disk, shared by processes
        (``n_jobs>1``) and sessions. Trusted folders only: files are plain
        ``.npy`` arrays (loaded without pickle).
    cache_max_bytes : int, default=1 GiB
        Bound of the memory cache (least recently used entries go first).
    verbose : int, default=0
        ``>0`` shows a tqdm progress bar over images.
    adapt_bn : bool, default=False
        AdaBN (Li et al., 2018): at ``fit``, the backbone's BatchNorm layers
        take the mean and variance of their inputs over the images seen there,
        and embed every later image with them (a scanner, a camera, a contrast
        the pretrained statistics never saw).

    Attributes
    ----------
    backbone_ : sktransfer.Backbone
        The loaded, frozen network.
    preprocessing_ : Preprocessing
        Input size and normalisation in use.
    pixel_range_ : tuple of float
        Value range mapped to [0, 1] for float inputs.
    layers_ : list of (str, str or None)
        Resolved layer requests (label, module name).
    n_features_out_ : int
        Embedding size.
    layer_widths_ : list of int
        Width of each requested layer's block of features.
    pooling_ : str or None
        ``pooling`` as at ``fit``, what ``transform`` applies until the next ``fit``.
    n_features_in_ : int
        Columns of ``X`` seen in ``fit`` (only when ``X`` is a 2-D table).
    feature_names_in_ : ndarray of str
        Column names seen in ``fit`` (only for DataFrames with string columns).

    See Also
    --------
    FineTuneClassifier : fine-tunes the same backbones end to end.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> X, y = load_digits(return_X_y=True)
    >>> model = make_pipeline(
    ...     PretrainedFeatureExtractor(image_size=32),
    ...     LogisticRegression(max_iter=1000),
    ... )
    >>> model.fit(X[:100], y[:100]).score(X[100:200], y[100:200]) > 0.5
    True
    """

    _parameter_constraints: dict = {
        "backbone": [str, nn.Module, HasMethods(["export_backbone"])],
        "weights": [str, os.PathLike, None],
        "layer": [str, list, tuple, None],
        "pooling": [StrOptions({p for p in POOLINGS if p is not None}), None],
        "image_size": [Number(Integral, 1, None, closed="left"), None],
        "input_shape": [tuple, list, np.ndarray, None],
        "pixel_range": [StrOptions({"auto"}), PixelRange()],
        "preprocessing": [dict, Preprocessing, None],
        "batch_size": [StrOptions({"auto"}), Number(Integral, 1, None, closed="left")],
        "device": [StrOptions({"auto"}), Device()],
        "num_workers": [StrOptions({"auto"}), Number(Integral, 0, None, closed="left")],
        "optimize": [StrOptions({"auto"}), "boolean"],
        "cache": ["boolean"],
        "cache_dir": [str, os.PathLike, None],
        "cache_max_bytes": [Number(Integral, 1, None, closed="left")],
        "verbose": ["verbose"],
        "adapt_bn": ["boolean"],
    }

    def __init__(
        self,
        backbone=DEFAULT_BACKBONE,
        weights="DEFAULT",
        layer="auto",
        pooling="avg",
        image_size=None,
        input_shape=None,
        pixel_range="auto",
        preprocessing=None,
        batch_size="auto",
        device="auto",
        num_workers="auto",
        optimize="auto",
        cache=True,
        cache_dir=None,
        cache_max_bytes=DEFAULT_MAX_BYTES,
        verbose=0,
        adapt_bn=False,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.image_size = image_size
        self.input_shape = input_shape
        self.pixel_range = pixel_range
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.optimize = optimize
        self.cache = cache
        self.cache_dir = cache_dir
        self.cache_max_bytes = cache_max_bytes
        self.verbose = verbose
        self.adapt_bn = adapt_bn

    # -- fitting ------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load the backbone and learn the value range of float inputs.

        Parameters
        ----------
        X : images
            Arrays, tensors, 2-D tables, paths or PIL images (see the user guide).
        y : None
            Ignored.

        Returns
        -------
        self : PretrainedFeatureExtractor
        """
        self.__dict__.pop("_optimized", None)
        source = as_images(X, self, input_shape=self.input_shape, reset=True)
        self.pixel_range_ = learn_pixel_range(source, self.pixel_range)
        self._backbone, facts = setup_backbone(self)
        if facts is None:  # a module, a fitted estimator or adapt_bn: worked out at every fit
            if self.adapt_bn:
                self.preprocessing_ = self.backbone_.preprocessing.replace(image_size=self.image_size)
                _adapt_batchnorm(self, source)
            facts = work_out(self.backbone_, self)
        self.preprocessing_ = facts.preprocessing
        self.layers_ = list(facts.layers)
        self.layer_widths_ = list(facts.layer_widths)
        self.n_features_out_ = sum(self.layer_widths_)
        self.pooling_ = self.pooling
        self._cache_setting = _fit_setting(self, facts)  # at fit: transform leaves __dict__ as it is
        return self

    # -- transforming -------------------------------------------------------
    def transform(self, X):
        """Embed images.

        Parameters
        ----------
        X : images
            Same kinds as in :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, ``n_features_out_``), dtype float32
        """
        check_is_fitted(self, "n_features_out_")
        source = as_images(X, self, input_shape=self.input_shape, pixel_range=self.pixel_range_)
        with progress_bar(self.verbose, len(source), "embedding", unit="img") as bar:
            if not self.cache:
                return self._run(source, bar)
            return cached_transform(
                source, _device_setting(self), lambda subset: self._run(subset, bar),
                self.cache_max_bytes, self.cache_dir,
            )

    def _run(self, source, bar=None):
        device = resolve_device(self.device)
        _network_on(self, device)
        batch_size = _batch_size(self.batch_size, device, self.preprocessing_.image_size, source.input_pixels)
        runner = None
        if _wants_optimized(self.optimize, device, len(source), built="_optimized" in self.__dict__):
            runner = _optimized_runner(self, batch_size)
        if runner is None:
            def runner(x):
                return forward_layers(self.backbone_, x, self.layers_, self.pooling_)

        return extract(
            runner, source, self.preprocessing_, device, batch_size, channels_last=True, progress=bar,
            num_workers=_num_workers(self, source, batch_size),
        )

    def get_feature_names_out(self, input_features=None):
        """Names of the output features: ``"<layer>_<i>"``.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Checked against the table columns seen in ``fit``; the names do not depend on it.

        Returns
        -------
        feature_names_out : ndarray of str
        """
        check_is_fitted(self, "n_features_out_")
        if input_features is not None:
            _check_feature_names_in(self, input_features)
        names = [
            f"{label}_{i}"
            for (label, _), width in zip(self.layers_, self.layer_widths_)
            for i in range(width)
        ]
        return np.asarray(names, dtype=object)

    # -- scikit-learn plumbing ------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = []
        tags.non_deterministic = False
        return tags

    _doc_link_template = DOCS_URL
    _doc_link_module = "sktransfer"


def _fit_setting(extractor, facts):
    """Everything but the image that changes an embedding (see :class:`SetupFacts`)."""
    return setting_digest(facts.network_digest, facts.family, extractor.layers_, extractor.pooling_,
                          extractor.preprocessing_, extractor.pixel_range_)


def _device_setting(extractor):
    """The cache setting of ``extractor``'s transforms: a GPU computes in bf16 or fp16, its embeddings
    are its own."""
    device = resolve_device(extractor.device)
    if device.type == "cpu":
        return extractor._cache_setting
    return setting_digest(extractor._cache_setting, device.type, str(amp_dtype(device)))


def _wants_optimized(optimize, device, n_images, built=False):
    """Whether a transform of ``n_images`` runs the traced module; ``built``: this fit's is built
    already (``"auto"`` then uses it for any number of images: its cost is paid)."""
    if device.type != "cpu" or optimize is False:
        return False
    return optimize is True or built or n_images >= OPTIMIZE_MIN_IMAGES


def _batch_size(batch_size, device, image_size, input_pixels=None):
    """``batch_size``, with ``"auto"`` resolved (see the parameter's description); ``input_pixels``:
    those of each image where whole batches reach the device at full size (arrays)."""
    if batch_size != "auto":
        return batch_size
    if device.type != "cpu":
        return gpu_batch_size(image_size, input_pixels)
    return power_of_two_below(2**18 // (image_size * image_size), 8, 64)  # the CPU's caches


def _num_workers(extractor, source, batch_size):
    """DataLoader workers for ``source``: only for more than one batch and ``WORKERS_MIN_PATHS`` paths."""
    return resolve_num_workers(extractor.num_workers, source, max(batch_size, WORKERS_MIN_PATHS))


def _network_on(extractor, device):
    """The network moved to ``device``; one not copied yet is left alone on the CPU (it is copied
    there if an eager forward needs it, and a traced module may not)."""
    if (extractor._backbone.made or device.type != "cpu") and module_device(extractor.backbone_) != device:
        extractor.backbone_.to(device)


def _optimized_runner(extractor, batch_size):
    """The traced module (a CheckedTrace), made once per fit (never pickled); ``None`` if it cannot be."""
    if not hasattr(extractor, "_optimized"):
        extractor._optimized = traced_runner(extractor, batch_size)
    elif extractor._optimized is not None and extractor._optimized.batch_size != batch_size:
        # batch_size set since: the same shared module, padded to the new size
        extractor._optimized = extractor._optimized.at_batch_size(batch_size)
    return extractor._optimized


def _adapt_batchnorm(extractor, source):
    """AdaBN at ``fit``: the backbone's BatchNorm statistics of the images ``source``."""
    source.pixel_range = extractor.pixel_range_
    device = resolve_device(extractor.device)
    batch_size = ADAPT_BN_BATCH if extractor.batch_size == "auto" else extractor.batch_size
    data = PreparedImages(source, extractor.preprocessing_, device, True, _num_workers(extractor, source, batch_size))
    adapt_batchnorm(extractor.backbone_.to(device), data, np.arange(len(source)), device, batch_size)

