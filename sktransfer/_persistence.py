"""Safe files for fitted estimators: tensors in safetensors, everything else in JSON.

``estimator.save(path)`` writes one ``.safetensors`` file: the weights as
tensors and, in the file's metadata (``"sktransfer"`` key), a JSON document
with the class, the parameters, the fitted attributes and how to rebuild each
network (a registry name such as ``"efficientnet_lite0"``, ``"resnet18"`` or
``"timm/<name>"``). :func:`load` reads it back without pickle: a file from a
stranger can hold wrong numbers, but it cannot run code.

Values JSON cannot express are tagged: ``{"__tuple__": [...]}``,
``{"__ndarray__": [...], "dtype": ...}``, ``{"__dict__": {...}}``,
``{"__preprocessing__": {...}}``, ``{"__random_affine__": {...}}`` and
``{"__backbone__": ..., "tensors": prefix}`` / ``{"__transfer_net__": ...}``
for networks.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ._version import __version__
from .backbones._backbone import Backbone
from .backbones._cut import cut_backbone
from .backbones._loading import load_named
from .data._augment import RandomAffine
from .data._preprocessing import Preprocessing
from .training._network import TransferNet

FORMAT = "sktransfer-estimator"
FORMAT_VERSION = 1
# estimator classes by name, filled by SaveMixin.__init_subclass__ (no import of the estimators here)
_CLASSES = {}


class _Unsupported(Exception):
    pass


# ----------------------------------------------------------------- encoding
class _Encoder:
    def __init__(self):
        self.tensors = {}

    def module(self, module, prefix):
        seen = set()
        for key, tensor in module.state_dict().items():
            tensor = tensor.detach().to("cpu").contiguous()
            if tensor.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
                tensor = tensor.clone()
            seen.add(tensor.untyped_storage().data_ptr())
            self.tensors[f"{prefix}.{key}"] = tensor
        return prefix

    def __call__(self, value, path):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (np.bool_, np.integer, np.floating)):
            return value.item()
        if isinstance(value, tuple):
            return {"__tuple__": [self(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {"__dict__": {k: self(v, f"{path}[{k!r}]") for k, v in value.items()}}
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "biuf" or (value.dtype.kind in "UO" and all(isinstance(v, str) for v in value.ravel())):
                return {"__ndarray__": value.tolist(), "dtype": value.dtype.str if value.dtype.kind != "O" else "O",
                        "shape": list(value.shape)}  # an empty array's shape is not in its list
            raise _Unsupported(path)
        if isinstance(value, Preprocessing):
            return {"__preprocessing__": self(dict(vars(value)), path)}
        if isinstance(value, RandomAffine):
            return {"__random_affine__": self(dict(vars(value)), path)}
        if hasattr(value, "export_backbone") and hasattr(value, "net_"):
            value = value.export_backbone()  # a fitted estimator as backbone: what fit would use
        if isinstance(value, Backbone):
            return {"__backbone__": _backbone_recipe(value, path), "tensors": self.module(value, path)}
        if isinstance(value, TransferNet):
            recipe = {
                "backbone": _backbone_recipe(value.backbone, path),
                "n_features": value.n_features, "n_outputs": value.head.out_features,
                "pooling": value.pooling, "dropout": value.dropout.p, "hidden": list(value.hidden_sizes),
            }
            return {"__transfer_net__": recipe, "tensors": self.module(value, path)}
        raise _Unsupported(path)


def _backbone_recipe(backbone, path):
    if backbone.family == "module":
        raise ValueError(
            f"save() cannot store {path}: a custom nn.Module ({backbone.name}) has no registry name to "
            "rebuild it from without running code. Use pickle or joblib (trusted files only), or save "
            "its state_dict and pass it as weights= with a registry backbone."
        )
    recipe = {"name": backbone.name, "family": backbone.family, "weights": backbone.weights,
              "preprocessing": dict(vars(backbone.preprocessing))}
    if getattr(backbone, "cut_stage", None) is not None:
        recipe["cut_stage"] = backbone.cut_stage
    return recipe


def save_estimator(estimator, path, extra=None, extra_tensors=None):
    """Write ``estimator`` (fitted or not) to ``path`` (see the module docstring).

    ``extra`` (JSON-able after tagging) and ``extra_tensors`` (``{name: tensor}``,
    stored under ``"extra."``) carry a training checkpoint's state.
    """
    name = type(estimator).__name__
    if name not in _CLASSES:
        raise TypeError(f"save() supports {sorted(_CLASSES)}, not {name}.")
    params = set(estimator.get_params(deep=False))
    state = estimator.__getstate__()
    encoder = _Encoder()
    attributes, defaulted = {}, []
    # parameters never stored (a distillation teacher: another model, used only by fit)
    unsaved = set(getattr(estimator, "_unsaved_params", ()))
    for key, value in state.items():
        try:
            if key in unsaved and value is not None:
                raise _Unsupported(key)
            attributes[key] = encoder(value, key)
        except _Unsupported:
            if key not in params:
                raise TypeError(
                    f"save() cannot store the fitted attribute {key} ({type(value).__name__}); "
                    "use pickle or joblib (trusted files only)."
                ) from None
            defaulted.append(key)
    if defaulted and extra is None:
        warnings.warn(
            f"save() cannot store {', '.join(f'{k}={state[k]!r}' for k in defaulted)} without pickle; "
            "the loaded estimator has their default values (they only matter when it is fitted again).",
            UserWarning, stacklevel=3,
        )
    document = {"format": FORMAT, "version": FORMAT_VERSION, "sktransfer": __version__,
                "class": name, "attributes": attributes, "defaulted": defaulted}
    if extra is not None:
        document["extra"] = encoder(extra, "extra")
    for key, tensor in (extra_tensors or {}).items():
        encoder.tensors[f"extra.{key}"] = tensor.detach().to("cpu").contiguous().clone()
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(encoder.tensors, tmp, metadata={"sktransfer": json.dumps(document)})
    os.replace(tmp, path)  # a reader never sees half a file


# ----------------------------------------------------------------- decoding
class _Decoder:
    def __init__(self, handle):
        self.handle = handle
        self.names = list(handle.keys())  # noqa: SIM118 - a safetensors handle, not a dict

    def tensors(self, prefix):
        start = prefix + "."
        return {k[len(start):]: self.handle.get_tensor(k) for k in self.names if k.startswith(start)}

    def __call__(self, value):
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__tuple__" in value:
            return tuple(self(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: self(v) for k, v in value["__dict__"].items()}
        if "__ndarray__" in value:
            dtype = object if value["dtype"] == "O" else np.dtype(value["dtype"])
            array = np.asarray(value["__ndarray__"], dtype=dtype)
            return array.reshape(value["shape"]) if "shape" in value else array
        if "__preprocessing__" in value:
            return Preprocessing(**self(value["__preprocessing__"]))
        if "__random_affine__" in value:
            return RandomAffine(**self(value["__random_affine__"]))
        if "__backbone__" in value:
            backbone = _rebuild_backbone(value["__backbone__"])
            _load_state(backbone, self.tensors(value["tensors"]), value["tensors"])
            return backbone
        if "__transfer_net__" in value:
            recipe = value["__transfer_net__"]
            net = TransferNet(_rebuild_backbone(recipe["backbone"]), recipe["n_features"],
                              recipe["n_outputs"], recipe["pooling"], recipe["dropout"], recipe.get("hidden", ()))
            _load_state(net, self.tensors(value["tensors"]), value["tensors"])
            return net.eval()
        raise ValueError(f"Unknown tagged value in the file: {sorted(value)}.")


def _rebuild_backbone(recipe):
    backbone = load_named(recipe["name"], None)  # the architecture only: weights come from the file
    if recipe.get("cut_stage") is not None:
        backbone = cut_backbone(backbone, recipe["cut_stage"], recipe["preprocessing"]["image_size"])
    if backbone.family != recipe["family"]:
        raise ValueError(f"backbone {recipe['name']!r} is a {backbone.family} model here, "
                         f"{recipe['family']} in the file (different library versions?).")
    backbone.preprocessing = Preprocessing(**recipe["preprocessing"])
    backbone.weights = recipe["weights"]
    return backbone


def _load_state(module, tensors, what):
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"The tensors stored for {what} do not fit the rebuilt network: {exc}") from None


def read_file(path):
    """``(estimator, extra, extra_tensors)`` from a file written by :func:`save_estimator`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No estimator file at {path!r}.")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            meta = (handle.metadata() or {}).get("sktransfer")
            if meta is None:
                raise ValueError(f"{path!r} is a safetensors file but was not written by sktransfer's save().")
            document = json.loads(meta)
            if document.get("format") != FORMAT or not isinstance(document.get("version"), int):
                raise ValueError(f"{path!r} is not an sktransfer estimator file.")
            if document["version"] > FORMAT_VERSION:
                raise ValueError(
                    f"{path!r} was written by sktransfer {document.get('sktransfer')} (format "
                    f"{document['version']}); this version reads format {FORMAT_VERSION}. Upgrade sktransfer."
                )
            cls = _CLASSES.get(document.get("class"))
            if cls is None:
                raise ValueError(f"{path!r} holds an unknown class {document.get('class')!r}.")
            decode = _Decoder(handle)
            state = {k: decode(v) for k, v in document["attributes"].items()}
            extra = decode(document["extra"]) if "extra" in document else None
            extra_tensors = decode.tensors("extra")
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"Could not read {path!r} as an sktransfer estimator file ({type(exc).__name__}: {exc})."
        ) from None
    defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for name in document.get("defaulted", []):
        state[name] = defaults[name]
    estimator = cls.__new__(cls)
    estimator.__setstate__(state)
    for module in ("backbone_", "net_", "probe_net_"):
        if isinstance(getattr(estimator, module, None), nn.Module):
            getattr(estimator, module).eval()
    if hasattr(estimator, "backbone_"):
        estimator.backbone_.requires_grad_(False)
    return estimator, extra, extra_tensors


def load(path):
    """Load an estimator written by ``save(path)``; runs no code from the file.

    Parameters
    ----------
    path : str or path-like
        A ``.safetensors`` file written by ``estimator.save(path)``.

    Returns
    -------
    estimator : PretrainedFeatureExtractor, FineTuneClassifier or FineTuneRegressor

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn.datasets import load_digits
    >>> import sktransfer
    >>> X, _ = load_digits(return_X_y=True)
    >>> ext = sktransfer.PretrainedFeatureExtractor(image_size=32).fit(X[:4])
    >>> path = os.path.join(tempfile.mkdtemp(), "extractor.safetensors")
    >>> ext.save(path)
    >>> sktransfer.load(path).transform(X[:2]).shape  # layer="auto" reads stage 3 at 32 px
    (2, 40)
    """
    return read_file(path)[0]


class SaveMixin:
    """``save(path)`` and ``load(path)`` for sktransfer estimators.

    sktransfer's estimator classes register themselves by class name, which is
    what files store (``register=False`` in the class statement leaves an
    abstract base out; ``register=True`` adds a class defined elsewhere).
    """

    def __init_subclass__(cls, register=None, **kwargs):
        super().__init_subclass__(**kwargs)
        # sktransfer's estimators register; a class defined again (a reloaded module) replaces
        # its earlier definition
        if register if register is not None else cls.__module__.startswith("sktransfer."):
            _CLASSES[cls.__name__] = cls

    def save(self, path):
        """Store this estimator as one safetensors file (weights) with JSON metadata.

        Unlike pickle or joblib, the file runs no code when loaded with
        :meth:`load` or :func:`sktransfer.load`, so it can be shared with
        people who should not have to trust you. Parameters that are Python
        callables (e.g. ``augment=f``) cannot be stored: a warning names them,
        and the loaded estimator has their defaults.

        Parameters
        ----------
        path : str or path-like
            Destination, conventionally ending in ``.safetensors``; written
            atomically.
        """
        save_estimator(self, path)

    @classmethod
    def load(cls, path):
        """Load an estimator of this class written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        estimator
        """
        estimator = load(path)
        if not isinstance(estimator, cls):
            raise TypeError(f"{os.fspath(path)!r} holds a {type(estimator).__name__}, not a {cls.__name__}.")
        return estimator

