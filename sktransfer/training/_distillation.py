"""Knowledge distillation (Hinton, Vinyals & Dean, 2015) as a loss term of the training objective.

The teacher's class probabilities ``p`` are computed once per fit. Softened at
temperature ``tau`` they are ``softmax(log(p) / tau)``, which equals
``softmax(z / tau)`` for the teacher's logits ``z`` whatever the teacher is
(any scikit-learn classifier with ``predict_proba``). With ``beta =
distill_weight`` the objective of a step is the one torchdistill's ``KDLoss``
computes::

    (1 - beta) * CE(labels, student)  +  beta * tau**2 * KL(p_tau || softmax(s / tau))

the cross-entropy over the step's labelled rows (the trainer scales the task
loss by ``1 - beta``), the divergence over every row, labelled or not, both
sample-weighted means. The ``tau**2`` keeps the soft term's gradients on the
scale of the hard term's as ``tau`` changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._terms import LossTerm


def soften(proba, temperature):
    """``softmax(log(proba) / temperature)`` per row (float64 in, float32 out); zeros stay zero."""
    proba = torch.as_tensor(proba, dtype=torch.float64)
    return torch.softmax(torch.log(proba) / float(temperature), dim=1).float()


def kd_divergence(logits, soft_targets, temperature):
    """Per row ``KL(soft_targets || softmax(logits / temperature))``, float32."""
    log_student = F.log_softmax(logits.float() / float(temperature), dim=1)
    return (torch.xlogy(soft_targets, soft_targets) - soft_targets * log_student).sum(1)


class DistillTerm(LossTerm):
    """``weight * tau**2 *`` the sample-weighted mean KD divergence over a step's rows.

    Parameters
    ----------
    soft_targets : tensor of shape (n_rows, n_classes)
        The teacher's softened probabilities of every row of the fit (:func:`soften`).
    sample_weight : tensor of shape (n_rows,)
    temperature, weight : float
    """

    def __init__(self, soft_targets, sample_weight, temperature, weight):
        super().__init__(weight)
        self.soft_targets = soft_targets
        self.sample_weight = sample_weight
        self.temperature = float(temperature)

    def __call__(self, step):
        if self.weight == 0:
            return None
        rows = torch.as_tensor(step.indices, device=self.soft_targets.device)
        soft, w = self.soft_targets[rows], self.sample_weight[rows]
        divergence = kd_divergence(step.output, soft.to(step.output.device), self.temperature)
        w = w.to(divergence.device)
        return self._done(self.temperature ** 2 * (divergence * w).sum() / w.sum().clamp(min=1e-12))
