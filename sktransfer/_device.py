"""Device choice, mixed precision and CPU-safe pickling of torch modules."""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch


def resolve_device(device):
    """'auto' -> CUDA when available, else CPU; anything else is checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}."
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was asked for but CUDA is not available on this machine; "
            "use device='auto' or 'cpu'."
        )
    return resolved


def amp_dtype(device):
    """The autocast dtype on ``device``: bf16 on CUDA GPUs that compute in it (compute capability
    8.0 on: Ampere, Ada, Hopper) and on ROCm; fp16 on Volta and Turing (V100, T4: torch calls bf16
    supported there, by emulation, but cuDNN has no bf16 convolutions below 8.0); None (float32,
    no autocast) on older GPUs, whose fp16 is slower than their float32, and on the CPU."""
    if device.type != "cuda":
        return None
    if torch.version.hip:
        return torch.bfloat16
    major = torch.cuda.get_device_capability(device)[0]
    return torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None


def autocast(device, enabled=True):
    """Autocast in :func:`amp_dtype` on CUDA; nothing on the CPU."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device):
    """A gradient scaler where training autocasts to fp16, whose narrow range would flush small
    gradients to zero; None elsewhere (bf16 has float32's range)."""
    if amp_dtype(device) != torch.float16:
        return None
    scaler = getattr(torch.amp, "GradScaler", None)  # torch 2.3 on; torch.cuda.amp's before
    return scaler("cuda") if scaler is not None else torch.cuda.amp.GradScaler()


def module_device(module):
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def cpu_copy(module):
    """Deep copy of ``module`` with every tensor on the CPU, without copying GPU tensors first."""
    memo = {}
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type != "cpu" and id(tensor) not in memo:
            cpu = tensor.detach().to("cpu")
            if isinstance(tensor, torch.nn.Parameter):
                cpu = torch.nn.Parameter(cpu, requires_grad=tensor.requires_grad)
            memo[id(tensor)] = cpu
    return copy.deepcopy(module, memo)


def cpu_state(state, module_attrs):
    """Pickle state of an estimator with its torch modules moved to the CPU."""
    state = dict(state)
    for name in module_attrs:
        module = state.get(name)
        if isinstance(module, torch.nn.Module) and module_device(module).type != "cpu":
            state[name] = cpu_copy(module)
    return state


def state_elsewhere(optimizer):
    """Whether some of ``optimizer``'s state (Adam's moments, a momentum buffer...) sits on
    another device than its parameter: the network moved since the last step."""
    return any(
        torch.is_tensor(value) and key != "step" and value.device != param.device
        for group in optimizer.param_groups for param in group["params"]
        for key, value in optimizer.state.get(param, {}).items()
    )


def carry_state(old, new):
    """Give ``new`` (the same parameters, built for their present device) ``old``'s state:
    ``new`` keeps its own settings (its kernel choice for that device: fused or not), and
    torch's state-dict loading puts each tensor where that optimizer kind keeps it."""
    state = old.state_dict()
    state["param_groups"] = new.state_dict()["param_groups"]
    # "step" goes to the CPU, where a plain optimizer keeps it; loading moves it for fused ones
    state["state"] = {i: {key: value.cpu() if key == "step" and torch.is_tensor(value) else value
                          for key, value in values.items()} for i, values in state["state"].items()}
    new.load_state_dict(state)
    return new


OUT_OF_MEMORY = (torch.cuda.OutOfMemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))


class HalvingOnOOM:
    """Call ``fn`` on a batch; when the device runs out of memory, retry in halves.

    The smaller size is kept for the following batches of the same pass, and
    one warning says so. A batch of one that does not fit re-raises the error.
    """

    def __init__(self, fn):
        self.fn = fn
        self.limit = None

    def __call__(self, x):
        while True:
            limit = min(self.limit or len(x), len(x))
            try:
                if limit >= len(x):
                    return self.fn(x)
                return torch.cat([self.fn(x[i:i + limit]) for i in range(0, len(x), limit)])
            except OUT_OF_MEMORY:
                if limit <= 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if self.limit is None:
                    warnings.warn(
                        f"Out of device memory at a batch of {limit} images; retrying with batches "
                        f"of {limit // 2}. To avoid the retry, free device memory or lower batch_size or "
                        f"image_size (a fine-tuned model predicts on a GPU in larger batches: see batch_size).",
                        RuntimeWarning, stacklevel=2,
                    )
                self.limit = limit // 2
