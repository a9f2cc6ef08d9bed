"""Per-epoch checkpoints of a fit, and resuming a killed fit from them.

With ``checkpoint_dir`` set, every finished epoch rewrites (atomically)
``<checkpoint_dir>/checkpoint-<run digest>.safetensors``: the estimator in the
safe :mod:`._persistence` format plus what training needs to go on exactly
where it stopped: optimizer moments, the schedule position, the random number
generators, the early-stopping state and the train/validation split.

The run digest covers the parameters (except ``checkpoint_dir``, ``verbose``
and ``warm_start``) and the training data, so folds, grid points and other
data never pick up each other's checkpoints. A fit with ``warm_start=True``
that finds the checkpoint of an unfinished run resumes it; finished runs are
not resumed.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import torch

from .._digest import state_digest
from .._persistence import read_file, save_estimator
from ..data._cache import item_keys

# the teacher counts through its probabilities of the data (its repr may name a memory address);
# test_time_augment acts only when predicting
_NOT_IN_DIGEST = ("checkpoint_dir", "verbose", "warm_start", "num_workers", "device", "teacher", "test_time_augment")


def _describe(value):
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    if isinstance(value, torch.nn.Module):
        return state_digest(value)
    return repr(value)


def run_digest(estimator, source, y, sample_weight, sample_domain=None, teacher_proba=None):
    """Digest of the parameters and the training data (and a teacher's probabilities of it)."""
    h = hashlib.blake2b(digest_size=12)
    params = estimator.get_params(deep=False)
    for key in sorted(params):
        if key not in _NOT_IN_DIGEST:
            h.update(f"{key}={_describe(params[key])};".encode())
    for key in item_keys(source):
        h.update(str(key).encode())
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(np.ascontiguousarray(sample_weight).tobytes())
    if sample_domain is not None:
        h.update(b"sample_domain" + np.ascontiguousarray(sample_domain).tobytes())
    if teacher_proba is not None:
        # rounded: the same teacher on other threads or kernels differs in the last bits
        h.update(b"teacher" + np.round(np.asarray(teacher_proba, dtype=np.float64), 5).tobytes())
    return h.hexdigest()


class Checkpointer:
    """Writes and reads the checkpoint file of one run."""

    def __init__(self, directory, digest):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, f"checkpoint-{digest}.safetensors")

    def save(self, estimator, *, phase, epochs_done, optimizer, scheduler, rng, device, best,
             no_improve, train_idx, valid_idx, scaler=None):
        os.makedirs(self.directory, exist_ok=True)
        optim = optimizer.state_dict()
        tensors = {"train_idx": torch.as_tensor(train_idx), "torch_rng": torch.get_rng_state()}
        if valid_idx is not None:
            tensors["valid_idx"] = torch.as_tensor(valid_idx)
        if device.type == "cuda":
            tensors["cuda_rng"] = torch.cuda.get_rng_state(device)
        for index, values in optim["state"].items():
            for key, tensor in values.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(tensor)
        if best is not None:
            for key, tensor in best[1].items():
                tensors[f"best.{key}"] = tensor
        extra = {
            "phase": phase, "epochs_done": epochs_done, "done": False, "no_improve": no_improve,
            "param_groups": optim["param_groups"],
            "scheduler_steps": None if scheduler is None else int(scheduler.last_epoch),
            "numpy_rng": rng.get_state(),
            "best": None if best is None else [best[0], best[2]],
            # fp16 training's gradient scale (numbers only), None without one
            "grad_scaler": None if scaler is None else scaler.state_dict(),
        }
        save_estimator(estimator, self.path, extra=extra, extra_tensors=tensors)

    def finish(self, estimator):
        """The final estimator, marked finished (a later warm start does not resume it)."""
        os.makedirs(self.directory, exist_ok=True)
        save_estimator(estimator, self.path, extra={"done": True})

    def load(self):
        """The saved estimator and training state of an unfinished run, or ``None``."""
        if not os.path.exists(self.path):
            return None
        try:
            estimator, extra, tensors = read_file(self.path)
        except (ValueError, OSError) as exc:
            warnings.warn(f"Ignoring the unreadable checkpoint {self.path!r}: {exc}", RuntimeWarning, stacklevel=3)
            return None
        if extra is None or extra.get("done", True):
            return None
        return Resume(estimator, extra, tensors)


class Resume:
    """The state of an unfinished run, applied piece by piece as training reaches it."""

    def __init__(self, estimator, extra, tensors):
        self.estimator = estimator
        self.phase = extra["phase"]
        self.epochs_done = extra["epochs_done"]
        self.no_improve = extra["no_improve"]
        self.extra = extra
        self.tensors = tensors
        self.train_idx = tensors["train_idx"].numpy()
        self.valid_idx = tensors["valid_idx"].numpy() if "valid_idx" in tensors else None

    def best(self):
        if self.extra["best"] is None:
            return None
        state = {k[len("best."):]: v for k, v in self.tensors.items() if k.startswith("best.")}
        return (self.extra["best"][0], state, self.extra["best"][1])

    def restore_training(self, optimizer, scheduler, rng, device, scaler=None):
        """Optimizer moments, schedule position, gradient scale and random generators."""
        state = {}
        for key, tensor in self.tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = tensor
        if scheduler is not None and self.extra["scheduler_steps"] is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                for _ in range(self.extra["scheduler_steps"] - scheduler.last_epoch):
                    scheduler.step()
        optimizer.load_state_dict({"state": state, "param_groups": self.extra["param_groups"]})
        if scaler is not None and self.extra.get("grad_scaler"):
            scaler.load_state_dict(self.extra["grad_scaler"])
        rng.set_state(self.extra["numpy_rng"])
        torch.set_rng_state(self.tensors["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in self.tensors:
            torch.cuda.set_rng_state(self.tensors["cuda_rng"], device)
