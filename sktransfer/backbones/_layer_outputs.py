"""The outputs of requested layers of a backbone, pooled into one vector per image."""

from __future__ import annotations

import contextlib
import re
import threading
import warnings

import torch
from torch import nn

from ._hooks import record
from ._pooling import pool

EMBEDDING = "embedding"
LOGITS = "logits"


def resolve_layers(backbone, layer):
    """``layer`` parameter -> list of (label, module name or None).

    Labels: ``"embedding"`` (pooled last feature map; ``layer=None``),
    ``"logits"`` (the pretrained model's own output), ``"stageK"`` (output of
    stage K, see ``Backbone.stages``) or any module name of ``backbone.model``
    (torchvision feature-extraction node names of module outputs, timm
    feature module names such as ``"blocks.3"``).
    """
    if layer is None:
        requested = [EMBEDDING]
    elif isinstance(layer, str):
        requested = [layer]
    elif isinstance(layer, (list, tuple)) and layer and all(isinstance(l, str) or l is None for l in layer):
        requested = [EMBEDDING if l is None else l for l in layer]
    else:
        raise TypeError(
            "layer must be None, a layer name (str) or a non-empty list of names, "
            f"got {layer!r}."
        )
    if len(set(requested)) != len(requested):
        raise ValueError(f"layer lists a name twice: {requested}.")
    modules = dict(backbone.model.named_modules())
    stage_modules = backbone.stage_output_modules()
    plan = []
    for name in requested:
        if name in (EMBEDDING, LOGITS):
            plan.append((name, None))
            continue
        match = re.fullmatch(r"stage(\d+)", name)
        if match and int(match.group(1)) < len(stage_modules):
            plan.append((name, stage_modules[int(match.group(1))]))
        elif name in modules and name != "":
            plan.append((name, name))
        else:
            stage_names = [f"stage{i}" for i in range(len(stage_modules))]
            top = [n for n, _ in backbone.model.named_children()]
            raise ValueError(
                f"Unknown layer {name!r} for backbone {backbone.name!r}. Valid: 'auto', None or "
                f"'{EMBEDDING}' (pooled embedding), '{LOGITS}', stages {stage_names} "
                f"(= modules {stage_modules}), or any module name such as {top} "
                "(all names: dict(model.named_modules()))."
            )
    return plan


def forward_layers(backbone, x, plan, pooling):
    """Pooled, concatenated outputs of the planned layers for one batch."""
    labels = [label for label, _ in plan]
    modules = dict(backbone.model.named_modules())
    taps = {label: modules[module] for label, module in plan if module is not None}
    captured = {}

    def whole_outputs():
        if LOGITS in labels:
            captured[LOGITS] = backbone(x)
        if EMBEDDING in labels:
            captured[EMBEDDING] = backbone.forward_features(x)

    # the taps record during the passes the logits and embedding need anyway; a module called more
    # than once gives its first call's output, whichever pass records it
    seen = first_outputs(record(whole_outputs, taps))
    missing = {label: module for label, module in taps.items() if label not in seen}
    if missing:
        # one more pass, which stops once every remaining tapped module has run
        seen.update(first_outputs(record(lambda: backbone(x), missing, stop_when_done=True)))
    captured.update(seen)
    return torch.cat([pool(captured[label], pooling) for label in labels], dim=1)


def first_outputs(events):
    first = {}
    for label, value in events:
        first.setdefault(label, value)
    return first


class PlanModule(nn.Module):
    """The planned layers of a backbone as one module (what gets traced).

    The backbone is held, not registered as a submodule: tracing then records
    its weights as constants of one flat graph instead of building a
    ScriptModule for each of its hundreds of submodules (Lite0: 0.2 s to trace
    instead of 0.8 s; the optimized module runs the same).
    """

    def __init__(self, backbone, plan, pooling):
        super().__init__()
        self.__dict__["backbone"] = backbone
        self.plan = list(plan)
        self.pooling = pooling

    def forward(self, x):
        return forward_layers(self.backbone, x, self.plan, self.pooling)


TRACE_BATCH = 2  # images in the example the plan is traced with


def optimize_for_cpu(backbone, plan, pooling, image_size):
    """Trace and freeze the plan (one graph of constants, BatchNorm folded into the
    convolutions): a :class:`TraceEntry`, or ``None`` when tracing fails.
    ``backbone`` is only read.

    ``torch.jit.optimize_for_inference`` is not applied: on channels_last input
    it gained 4 % on Lite0 and ResNet-18 and lost 8 % on MobileNetV3 and 22 %
    on ConvNeXt-T, for another 0.02-0.06 s of build time
    (``benchmarks/trace_build.py``, docs/benchmarks.md). The frozen graph runs
    with oneDNN Graph fusion instead (:class:`CheckedTrace`).
    """
    module = PlanModule(backbone, plan, pooling).eval()
    example = torch.randn(TRACE_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                traced = torch.jit.trace(module, example.contiguous(memory_format=torch.channels_last),
                                         check_trace=False)
                frozen = torch.jit.freeze(traced)
    except Exception:  # tracing is best effort: hooks, data-dependent shapes...
        return None
    return TraceEntry(frozen)


class TraceEntry:
    """An optimized module and what the checks of it found so far.

    Shared by the :class:`CheckedTrace` of every extractor that reads the same
    weights with the same settings in a process (built once): a check passed by
    one is not repeated by the others, and a wrong answer sends them all to
    eager execution.
    """

    def __init__(self, module):
        self.module = module  # None once it gave a wrong answer: eager from then on
        self.width = None  # the eager width, known once the first batch passed its check
        self.checked = set()  # the batch sizes the module has run and passed the check at


class _FusionSwitch:
    """oneDNN Graph fusion on while any thread is inside (TorchScript's global switch, put back
    as it was when the last one leaves).

    The profiling executor compiles a frozen graph's convolutions, their
    activations and the elementwise work between them into fused oneDNN
    partitions on a shape's second call, and runs those from then on, whatever
    the switch says later: Lite0 at 224 px took 0.58-0.60 s for 192 images
    against 1.10-1.22 s for the frozen graph run without it and 1.93-2.0 s
    eagerly (docs/benchmarks.md). The switch is the process's: while an
    extractor's traced module runs, other TorchScript code compiled in the
    process gets the fusion too, and a value set meanwhile is put back.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._inside = 0
        self._before = None

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if self._inside == 0:
                self._before = torch._C._jit_llga_enabled()
                torch.jit.enable_onednn_fusion(True)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    torch.jit.enable_onednn_fusion(self._before)


onednn_fusion = _FusionSwitch()


class CheckedTrace:
    """The optimized module of a :class:`TraceEntry`, run at one batch size and
    checked against the eager plan on the batches it runs first.

    Every batch is run as a batch of ``batch_size`` images (a shorter one padded
    with zeros, their rows dropped): the executor then compiles one shape, and
    an image's embedding does not depend on the batch it came in (each shape
    has kernels of its own). A shape's first call is the executor's profiling
    run, whose output differs from the compiled one's in the 6th digit: it runs
    on the first batch and is thrown away, so that every embedding comes from
    the compiled graph.

    The first batch of each size the module runs must match the eager
    embeddings of its first two images (cosine >= ``tolerance`` each; a graph
    that baked in its example's batch size fails at any other); every batch
    must give one row per image of the eager width. A mismatch switches every
    extractor sharing the entry to eager execution for good; an error, this
    one only. ``eager`` is called only for a check or after a failure.
    """

    def __init__(self, entry, eager, batch_size, tolerance=0.9999):
        self.entry = entry
        self.eager = eager
        self.batch_size = batch_size
        self.tolerance = tolerance
        self.raised = False  # the module raised here: eager for this extractor only

    def at_batch_size(self, batch_size):
        """The same shared module, run at ``batch_size`` (an extractor whose ``batch_size`` was set)."""
        other = CheckedTrace(self.entry, self.eager, batch_size, self.tolerance)
        other.raised = self.raised
        return other

    @property
    def traced(self):
        """The optimized module, or ``None`` once it failed a check or raised."""
        return None if self.raised else self.entry.module

    def __call__(self, x):
        module = self.traced
        if module is not None:
            out = self._traced(module, x)
            if out is not None and tuple(out.shape) == (x.shape[0], self.entry.width):
                return out
            if not self.raised:  # a wrong answer: wrong for every extractor that shares it
                self.entry.module = None
        return self.eager(x)

    def _traced(self, module, x):
        """The module's output, or ``None`` where it fails or disagrees with the eager plan."""
        entry = self.entry
        n = x.shape[0]
        padded = _padded(x, self.batch_size)
        size = padded.shape[0]
        checking = size not in entry.checked
        try:
            with torch.jit.optimized_execution(True), onednn_fusion():
                if not checking:
                    out = module(padded)
                else:
                    with warnings.catch_warnings():  # first runs only: not thread-safe, and may warn
                        warnings.simplefilter("ignore")
                        # the profiling executor's runs (1 unless set otherwise), which compile nothing yet
                        for _ in range(torch._C._jit_get_num_profiled_runs()):
                            module(padded)
                        out = module(padded)
        except Exception:  # may be this call's own trouble (memory...): the others keep the module
            self.raised = True
            return None
        if out.ndim != 2 or out.shape[0] != size:
            return None
        out = out[:n]
        if checking:
            expected = self.eager(x[:2])
            if out.shape[1:] != expected.shape[1:] or not _agree(out[:2], expected, self.tolerance):
                return None
            entry.width = expected.shape[1]
            entry.checked.add(size)
        return out


def _padded(x, batch_size):
    """``x`` with zero images appended up to ``batch_size`` (as it is if not shorter)."""
    if x.shape[0] >= batch_size:
        return x
    padded = x.new_zeros((batch_size, *x.shape[1:])).contiguous(memory_format=torch.channels_last)
    padded[:x.shape[0]] = x
    return padded


def _agree(got, expected, tolerance):
    """Each row at cosine >= ``tolerance``, or within float32 rounding of the eager row (rows of
    zeros, which a ReLU gives a small image's last map, have no cosine)."""
    got, expected = got.float(), expected.float()
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=1, eps=1e-12)
    rounding = (got - expected).abs().amax(dim=1) <= 1e-5 * expected.abs().amax(dim=1).clamp_min(1.0)
    return bool((cosine >= tolerance).logical_or(rounding).all())
