"""Shared helpers for the hand-run benchmarks (not part of the package)."""

import platform
import time

import numpy as np
import torch


def machine():
    import sklearn
    import timm
    import torchvision

    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:  # pragma: no cover
        mem = "RAM unknown"
    cpu = platform.processor() or platform.machine()
    cpu += f" ({_cpu_model()}, torch CPU kernels: {torch.backends.cpu.get_cpu_capability()})"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, {mem}, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
        f"scikit-learn {sklearn.__version__}"
    )


def _cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), else "model unknown"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return "model unknown"


def best_of(fn, repeats=3):
    """Best wall time of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def photos(n, size=224):
    """``n`` real photographs from scikit-image, resized to ``size``, uint8 NHWC."""
    from PIL import Image
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry"]
    base = []
    for name in names:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        base.append(np.asarray(Image.fromarray(img[..., :3]).resize((size, size))))
    return np.stack([base[i % len(base)] for i in range(n)])


def min_cosine(Z, reference):
    """The smallest cosine between a row of ``Z`` and the same row of ``reference``."""
    return float(((Z * reference).sum(1) / np.linalg.norm(Z, axis=1) / np.linalg.norm(reference, axis=1)).min())
