import contextlib
import os

import numpy as np
import pytest
import torch

# The suite must pass offline with an empty torch cache and few cores.
# nothing is downloaded (tests/test_downloads.py lifts the switches and simulates the hub)
os.environ.setdefault("SKTRANSFER_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# pytest-xdist runs the suite in WORKERS processes (pyproject: -n 2); each gets its share of the
# cores, as do the examples it runs in subprocesses (OMP_NUM_THREADS)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)


# The suite asserts CPU behaviour (random_state repeats bitwise; accuracies were measured on
# CPUs), as CI has no GPU. On a machine with one, only the modules marked "cuda"
# (tests/test_cuda.py) see it, so that pytest checks there what it checks in CI. Hidden while
# modules are collected too: estimator tags read then (non_deterministic on CUDA) choose
# scikit-learn's checks. SKTRANSFER_TESTS_ON_GPU=1 lets every test see the GPU.
GPU_FOR_ALL = os.environ.get("SKTRANSFER_TESTS_ON_GPU") == "1"


@contextlib.contextmanager
def no_gpu():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        patch.setenv("CUDA_VISIBLE_DEVICES", "")  # and the examples' and docs' subprocesses
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    hide = isinstance(collector, pytest.Module) and not GPU_FOR_ALL and torch.cuda.is_available()
    with no_gpu() if hide else contextlib.nullcontext():
        yield


@pytest.fixture(scope="module", autouse=True)
def no_gpu_unless_marked(request):
    """Module-scoped and autouse: set before the module's own fixtures fit anything."""
    marked = request.node.get_closest_marker("cuda") is not None
    hide = not (marked or GPU_FOR_ALL) and torch.cuda.is_available()
    with no_gpu() if hide else contextlib.nullcontext():
        yield


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
    monkeypatch.setenv("SKTRANSFER_OFFLINE", "1")
    return tmp_path


@pytest.fixture
def fresh_builds(monkeypatch):
    """A process that has built no backbone yet (and so derived and traced nothing from one)."""
    from sktransfer.backbones import _loading

    monkeypatch.setattr(_loading, "_BUILT", type(_loading._BUILT)())


@pytest.fixture
def rng():
    return np.random.default_rng(0)
