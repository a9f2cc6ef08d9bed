"""Where to cut a backbone: the ``layer="auto"`` rule, and backbones cut at a stage.

An ImageNet network run on small inputs ends in feature maps of 2x2 or 1x1
pixels, whose statistics the pretrained BatchNorm layers never saw. Measured on
three image sets at 32 and 64 px (``benchmarks/few_shot.py``,
``docs/benchmarks.md``), linear models on the pooled output of the deepest stage
whose map is still at least ``AUTO_MIN_SIDE`` pixels on a side beat the final
embedding by 0.1 to 0.6 accuracy; at a backbone's native size the rule picks the
final embedding, as before. Fine-tuning cuts one step deeper, at the deepest stage
whose map is at least ``FINE_TUNE_MIN_SIDE`` pixels and larger than the last map:
with few images at 24, 36, 40 and 48 px, fine-tuning Lite0 after a 3x3 map (with the
backbone rate and mixup that follow the cut, ``training/_freezing.shallow_network``)
beat fine-tuning after the larger map before it (``benchmarks/few_shot_cells.py``,
docs/benchmarks.md, "The rule follows the cut").
"""

from __future__ import annotations

import contextlib
import re

import torch

from .._device import module_device
from ._backbone import Backbone
from ._chain import ChainFamily, module_chain
from ._hooks import record
from ._layer_outputs import (  # EMBEDDING: layer_ of an uncut backbone
    EMBEDDING,
    first_outputs,
)

AUTO = "auto"
AUTO_MIN_SIDE = 4  # the last map's, and the extractor's stages'
FINE_TUNE_MIN_SIDE = 3  # the fine-tuning estimators' stages'


@contextlib.contextmanager
def probing(backbone, image_size):
    """Around a probe forward of one ``image_size`` image at fit: a network that fails there (a ViT's
    fixed grid, a map shrunk to nothing) raises a ``ValueError`` that names the size."""
    try:
        yield
    except (AssertionError, RuntimeError) as exc:
        raise ValueError(
            f"Backbone {backbone.name!r} failed on a probe image of {image_size}x{image_size} pixels "
            f"({type(exc).__name__}: {exc}). If the size is the cause, set image_size to one it accepts; its "
            f"native size is {backbone.preprocessing.image_size}."
        ) from exc


def stage_outputs(backbone, image_size):
    """``(outputs, final)`` for a probe image of ``image_size``: each stage's output
    (``None`` for a stage whose module did not run) and ``forward_features``' output."""
    modules = dict(backbone.model.named_modules())
    names = backbone.stage_output_modules()
    taps = {i: modules[name] for i, name in enumerate(names) if name in modules}
    final = []

    def run():
        # channels_last: the layout CPU kernels run fastest (a third less time at 224 px); shapes are the same
        probe = torch.zeros(1, 3, image_size, image_size, device=module_device(backbone))
        probe = probe.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            final.append(backbone.forward_features(probe))

    was_training = backbone.training
    backbone.eval()
    try:
        with probing(backbone, image_size):
            found = first_outputs(record(run, taps))  # a module called twice: its first output, as transform
    finally:
        backbone.train(was_training)
    return [found.get(i) for i in range(len(names))], final[0]


def stage_map_sides(backbone, image_size, probed=None):
    """``(sides, final)``: the smaller side of each stage's output map, and of the last map.

    ``None`` where an output is not a ``(N, C, H, W)`` map (tokens, vectors).
    ``probed``: :func:`stage_outputs` at ``image_size``, if already run.
    """
    outputs, final = probed or stage_outputs(backbone, image_size)
    return [map_side(out) for out in outputs], map_side(final)


def map_side(out):
    """The smaller side of a ``(N, C, H, W)`` map (the first of a tuple); ``None`` for anything else."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    return min(out.shape[-2:]) if isinstance(out, torch.Tensor) and out.ndim == 4 else None


def auto_stage(backbone, image_size, probed=None, min_side=AUTO_MIN_SIDE):
    """Stage index chosen by ``layer="auto"`` at ``image_size``; ``None``: the final embedding.

    The final embedding when its map is at least ``AUTO_MIN_SIDE`` on a side (or
    is not a map); otherwise the deepest stage whose map is at least ``min_side``
    and larger than the last map (a cut within the last map's resolution would
    only drop layers). A backbone already cut (a fitted estimator's, or
    ``export_backbone()``) is kept whole down to a last map of
    ``FINE_TUNE_MIN_SIDE``, where fine-tuning cut it: a model fine-tuned at 48 px
    ends after stage 5 on a 3x3 map, and its stages are what it transfers.
    """
    sides, final = stage_map_sides(backbone, image_size, probed)
    keep_whole = FINE_TUNE_MIN_SIDE if getattr(backbone, "cut_stage", None) is not None else AUTO_MIN_SIDE
    if final is None or final >= keep_whole:
        return None
    deep_enough = [i for i, side in enumerate(sides) if side is not None and side >= min_side and side > final]
    return deep_enough[-1] if deep_enough else None


def stage_index(layer, n_stages=None):
    """``"stageK"`` -> K (when K < ``n_stages``, if given); ``None`` for anything else."""
    match = re.fullmatch(r"stage(\d+)", layer) if isinstance(layer, str) else None
    if match is None or (n_stages is not None and int(match.group(1)) >= n_stages):
        return None
    return int(match.group(1))


def resolve_layer(backbone, layer, image_size, probed=None, min_side=AUTO_MIN_SIDE):
    """``layer="auto"`` -> ``"stageK"`` or ``None`` (the final embedding); other values unchanged.

    ``probed``: :func:`stage_outputs` at ``image_size``, if already run; ``min_side``: see
    :func:`auto_stage`.
    """
    if isinstance(layer, str) and layer == AUTO:
        stage = auto_stage(backbone, image_size, probed, min_side)
        return None if stage is None else f"stage{stage}"
    return layer


def cut_at_layer(backbone, layer, image_size):
    """``(backbone cut at layer, layer_)`` for a fine-tuning estimator's ``layer`` parameter:
    ``"auto"`` resolved at ``image_size`` with stage maps of ``FINE_TUNE_MIN_SIDE``; ``None`` or
    ``"embedding"``: the whole backbone."""
    resolved = resolve_layer(backbone, layer, image_size, min_side=FINE_TUNE_MIN_SIDE)
    if resolved in (None, EMBEDDING):
        return backbone, EMBEDDING
    stage = stage_index(resolved, len(backbone.stages))
    if stage is None:
        raise ValueError(
            f"layer={layer!r}: backbone {backbone.name!r} has stages stage0 ... stage{len(backbone.stages) - 1}."
        )
    return cut_backbone(backbone, stage, image_size), resolved


def cut_backbone(backbone, stage, image_size=None):
    """``backbone`` cut after stage ``stage``: the later stages and the pretrained
    classifier are removed from the model.

    Needs a backbone whose ``forward_features`` is a chain of modules
    (:func:`~sktransfer.backbones._chain.module_chain`, verified on a probe), with the
    stage's output module on that chain. The result has family ``"chain"``,
    keeps the parameter names of the stages it holds (L2-SP anchors, saved
    files and ``freeze_depth`` see the same names) and records ``cut_stage``.
    """
    size = image_size or backbone.preprocessing.image_size
    probe = torch.zeros(2, 3, size, size)
    chain = module_chain(backbone, probe)
    target = backbone.stage_output_modules()[stage]
    last = None if chain is None else max(
        (i for i, (name, _) in enumerate(chain) if name == target or name.startswith(target + ".")),
        default=None,
    )
    if last is None:
        raise ValueError(
            f"layer='stage{stage}' cannot cut backbone {backbone.name!r} for fine-tuning: its forward "
            "pass is not a chain of modules through that stage. Use layer=None (the whole backbone) "
            "or a backbone such as 'efficientnet_lite0', 'resnet18' or 'convnext_tiny'."
        )
    model = backbone.model
    # the later stages and the pretrained classifier (which no longer fits) go
    dropped = [name for name, _ in chain[last + 1:]]
    dropped += sorted({p.rpartition(".")[0] for p in backbone.head_parameter_names()} - {""})
    for name in dropped:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, torch.nn.Identity())
    kept = {name for name, _ in model.named_parameters()}
    stages = [(label, [p for p in params if p in kept]) for label, params in backbone.stages[: stage + 1]]
    cut = Backbone(
        model, name=backbone.name, family=ChainFamily.name, preprocessing=backbone.preprocessing,
        body=[name for name, _ in chain[: last + 1]], stages=stages, weights=backbone.weights,
    )
    cut.cut_stage = stage
    return cut
