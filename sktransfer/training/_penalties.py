"""L2-SP and L2 penalties on backbone weights (Li, Grandvalet & Davoine, 2018)."""

from __future__ import annotations

import torch

REGULARIZATIONS = ("l2sp", "l2")


class WeightPenalty:
    """``lambda / 2 * sum ||w - w_anchor||^2`` over the trainable backbone weights.

    With ``regularization="l2sp"`` the anchor is the pretrained weights; with
    ``"l2"`` it is zero (ordinary weight decay, written as a loss term).
    The optimizer applies no weight decay of its own to these parameters, so
    the pull is counted once.
    """

    def __init__(self, net, reg_lambda, regularization, anchor_state=None):
        self.reg_lambda = float(reg_lambda)
        self.params = []
        self.anchors = []
        if self.reg_lambda == 0:
            return
        for name, param in net.backbone.model.named_parameters():
            if not param.requires_grad:
                continue
            self.params.append(param)
            if regularization == "l2sp":
                self.anchors.append(anchor_state[name].to(param.device, param.dtype))
            else:
                self.anchors.append(None)

    def __call__(self, step=None):
        """The penalty (a loss term: ``step`` is not needed), or ``None`` without weights."""
        if not self.params:
            return None
        total = 0.0
        for param, anchor in zip(self.params, self.anchors):
            diff = param if anchor is None else param - anchor
            total = total + diff.pow(2).sum()
        return 0.5 * self.reg_lambda * total

    def value(self):
        with torch.no_grad():
            out = self()
        return 0.0 if out is None else float(out)
