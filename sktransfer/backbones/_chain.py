"""Backbones as chains of modules: finding the chain, and the ``"chain"`` family it defines.

A backbone whose ``forward_features`` is the composition of a list of modules
can be cut after any of them (``_cut.py``) and split at a stage boundary (the
frozen prefix of ``training/_frozen_prefix.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from ._hooks import record
from ._registry import Family, register_family


class ChainFamily(Family):
    """A backbone cut at a stage: ``body`` lists the modules applied in sequence."""

    name = "chain"

    def forward_features(self, backbone, x):
        for name in backbone.body:
            x = backbone.model.get_submodule(name)(x)
        return x

    def output_module(self, backbone, name):
        """A container of the body (``blocks.1``) is never called: its last block in the body
        (``blocks.1.1``) gives its output."""
        if name in backbone.body:
            return name
        return next((b for b in reversed(backbone.body) if b.startswith(name + ".")), name)


def module_chain(backbone, probe):
    """Modules whose composition, in order, is ``backbone.forward_features``.

    The model's direct children called by ``forward_features`` are recorded in
    call order, ``nn.Sequential`` containers are expanded into their children,
    and the composition is checked against ``forward_features`` on ``probe``
    (eval mode).  Returns a list of ``(name, module)`` or ``None`` when the
    forward pass is not such a chain (functional steps between modules, a
    module called twice, skip connections across children...).
    """
    model = backbone.model
    if backbone.family == ChainFamily.name:  # cut at a stage: the chain is its definition
        return [(name, model.get_submodule(name)) for name in backbone.body]
    was_training = backbone.training
    backbone.eval()
    try:
        expected = []

        def run():
            with torch.no_grad():
                expected.append(backbone.forward_features(probe))

        order = [name for name, _ in record(run, dict(model.named_children()), inputs=True)]
        if not order or len(set(order)) != len(order):
            return None
        chain = _expand([(name, model.get_submodule(name)) for name in order])
        with torch.no_grad():
            x = probe
            for _, module in chain:
                x = module(x)
        if not (isinstance(x, torch.Tensor) and x.shape == expected[0].shape and torch.equal(x, expected[0])):
            return None
        return chain
    except Exception:  # noqa: BLE001 - any failure means "not a chain"
        return None
    finally:
        backbone.train(was_training)


def _expand(chain):
    out = []
    for name, module in chain:
        if type(module).forward is nn.Sequential.forward and len(module):
            out.extend(_expand([(f"{name}.{child}", m) for child, m in module.named_children()]))
        else:
            out.append((name, module))
    return out


register_family(ChainFamily())
