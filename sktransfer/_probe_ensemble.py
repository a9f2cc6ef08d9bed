"""The probe ensemble: a few-image classifier predicts with its starting point too.

Fine-tuning on a few images starts from a linear probe (the pretrained
backbone with the head solved on its frozen features, ``head_init_="solve"``)
and moves away from it in a direction the few images barely determine: runs
that differ only in their random stream scored from 0.91 to 1.00 on the same
faces (``docs/benchmarks.md``). Averaging the class probabilities of the
fine-tuned network and of the probe it started from (an output-space
ensemble, as in WiSE-FT's comparison, Wortsman et al., CVPR 2022) keeps what
fine-tuning learned and damps that noise. On the 16 few-image cells of
``benchmarks/few_shot.py`` (3 draws each) it scored higher than the fine-tuned
network alone in 10, equal in 2 and lower in 4 (by at most 0.005); +0.005 on
average, up to +0.021.

The probe is ``probe_net_``, a copy of the network taken when its head has
been solved, before the first optimizer step. Predictions then run both
networks on each prepared batch (:class:`ProbeAverage`): twice the cost of
predicting, nothing more in training.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ._device import module_device
from .training._freezing import few_images, resolve_bn_stats
from .training._fusion import average_modules
from .training._head_init import resolve_head_init


def log_mean_probabilities(outputs, splits):
    """Per task (``splits``: its columns), the log of the mean of the softmax of ``outputs`` (a
    list of logits of the same rows): logits whose softmax is the mean of the probabilities.

    In float64, rounded back: float32's vectorised and scalar exp and log differ in the last bit,
    and which one an element gets depends on the batch's size (check_methods_subset_invariance)."""
    out = []
    for task in zip(*(o.split(splits, 1) for o in outputs)):
        log_p = torch.stack([t.double().log_softmax(1) for t in task])
        out.append(torch.logsumexp(log_p, 0) - math.log(len(task)))
    return torch.cat(out, 1).float()


class ProbeAverage(nn.Module):
    """Per task, the log of the mean of two networks' softmax outputs: logits whose softmax is
    the mean of the two networks' class probabilities."""

    def __init__(self, net, probe, splits):
        super().__init__()
        self.net = net
        self.probe = probe
        self.splits = list(splits)

    def forward(self, x):
        return log_mean_probabilities([self.net(x), self.probe(x)], self.splits)


class ProbeEnsembleMixin:
    """``probe_ensemble`` for :class:`~sktransfer.FineTuneClassifier` (see its docstring)."""

    def _probe_ensemble_set(self):
        """``probe_ensemble`` as set by the user: ``True`` or ``False`` (numpy's booleans too), or
        ``None`` for ``"auto"``."""
        return None if isinstance(self.probe_ensemble, str) else bool(self.probe_ensemble)

    def _uses_probe_ensemble(self, n_train):
        """Whether a fit on ``n_train`` training rows keeps its starting point as ``probe_net_``."""
        chosen = self._probe_ensemble_set()
        if chosen is not None:
            return chosen
        # a fit resolves head_init_ before it keeps its start point; unfitted, the same rule from the parameters
        head_init = getattr(self, "head_init_", None) or resolve_head_init(
            self.head_init, resolve_bn_stats(self.bn_stats, n_train, self.batch_size))
        # the probe never sees the target domain or the teacher, and a student is meant to be cheap
        return (few_images(n_train, self.batch_size) and head_init == "solve"
                and self.adaptation is None and self._teacher() is None)

    def _resolve_few_image_settings(self, n_train, start):
        super()._resolve_few_image_settings(n_train, start)
        if start and self._probe_ensemble_set() and self.head_init == "auto":
            self.head_init_ = "solve"  # the probe asked for is the network with the solved head

    def _check_probe_ensemble(self):
        if self._probe_ensemble_set() and self.head_init not in ("auto", "solve"):
            raise ValueError(
                "probe_ensemble=True averages the fine-tuned network with the linear probe it started "
                "from, which needs the solved head: head_init='solve' or 'auto' "
                f"(got head_init={self.head_init!r}). Set head_init='auto' or probe_ensemble=False."
            )

    def _start_point(self, n_train):
        """Called once training's starting network is set. ``n_train``: a fit from the pretrained
        network on ``n_train`` rows, whose network as it is now (head solved, backbone pretrained)
        is kept when the ensemble is on, on the CPU while training runs. ``None``: training that
        goes on from a fitted network (``warm_start``, a checkpoint, ``partial_fit``) keeps the
        probe it has, unless ``probe_ensemble=False``; a first ``partial_fit`` has none."""
        if n_train is not None:
            keep = self._uses_probe_ensemble(n_train)
            self.probe_net_ = copy.deepcopy(self.net_).cpu().requires_grad_(False).eval() if keep else None
        else:
            self.probe_net_ = None if self._probe_ensemble_set() is False else getattr(self, "probe_net_", None)

    def _prediction_net(self):
        """The probe ensemble's mean when there is a probe, else what the bases predict with."""
        net = super()._prediction_net()
        if getattr(self, "probe_net_", None) is None:
            return net
        self.probe_net_.to(module_device(self.net_))  # the two may have been moved apart
        return ProbeAverage(net, self.probe_net_, self._splits())

    def _teaching_proba(self, X):
        """What this classifier teaches as a ``teacher``: the fine-tuned network's probabilities,
        without the probe and in one pass (no test-time views). Students distilled from the
        averaged probabilities learned less (50 digits, 3 draws: 0.893 against 0.915;
        docs/benchmarks.md)."""
        return self._per_task(X, torch.softmax, net=self.net_)


def fuse_probes(fused, members, weights):
    """A soup's ``probe_net_``: the weighted mean of its members' probes when all have one, else none."""
    if not hasattr(fused, "probe_net_"):  # a regressor
        return
    probes = [getattr(m, "probe_net_", None) for m in members]
    if any(p is None for p in probes):
        fused.probe_net_ = None
        return
    fused.probe_net_.load_state_dict(average_modules(probes, weights))
    fused.probe_net_.eval()
