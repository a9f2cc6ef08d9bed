import os

import numpy as np
import pytest
import torch

# The suite must pass offline with an empty torch cache and few cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.data, data.target


@pytest.fixture(scope="session")
def photos():
    from skimage import data

    return {name: getattr(data, name)() for name in ("chelsea", "coffee", "rocket", "astronaut")}


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No torch-hub or Hugging Face cache: only embedded weights can load."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
