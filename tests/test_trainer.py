"""The Trainer on its own: a loss term plugs into the loop without the estimator."""

import numpy as np
import pytest
import torch
from _tiny import TinyConv, patched_grad_scalers, real_cpu_grad_scalers, tiny_trainer

from sktransfer import load_backbone
from sktransfer.training._network import TransferNet
from sktransfer.training._trainer import Phase, TrainSettings


class _HeadNorm:
    """A loss term: strength * ||head weight||², and what it saw of each step."""

    def __init__(self, net, strength):
        self.net = net
        self.strength = strength
        self.steps = []

    def __call__(self, step):
        self.steps.append((step.x.shape[0], step.output.shape, tuple(step.indices)))
        return self.strength * self.net.head.weight.pow(2).sum()

    def value(self):
        return float(self.strength * self.net.head.weight.detach().pow(2).sum())


def _train(strength, terms_seen, **settings):
    def make(net):
        term = _HeadNorm(net, strength)
        terms_seen.append(term)
        return term

    settings = TrainSettings(**{"lr": 0.05, "batch_size": 4, "lr_schedule": "constant", "loss_terms": [make],
                                **settings})
    trainer, net, history = tiny_trainer(settings)
    assert trainer.fit([Phase("fine_tune", 0, 3)], np.arange(12))
    return net, history


def test_a_loss_term_changes_training_and_is_recorded():
    seen_plain, seen_pulled = [], []
    plain, plain_history = _train(0.0, seen_plain)
    pulled, history = _train(5.0, seen_pulled)
    # the term took part in every optimizer step: 3 epochs x 3 batches of 4
    term = seen_pulled[0]
    assert len(term.steps) == 9 and all(n == 4 and shape == (4, 2) for n, shape, _ in term.steps)
    assert sorted(i for _, _, idx in term.steps[:3] for i in idx) == list(range(12))
    # it pulled the head's weights toward zero, and the history records its value
    assert pulled.head.weight.norm() < 0.5 * plain.head.weight.norm()
    assert history[-1]["penalty"] == term.value() > 0
    assert plain_history[-1]["penalty"] == 0.0


class _PowerOfTwoScaler:
    """What a GradScaler does on a GPU under fp16 autocast, on the CPU: the loss times 1024, the
    gradients divided back before the step (exact in float32), every call recorded."""

    def __init__(self):
        self.calls = []

    def scale(self, loss):
        self.calls.append("scale")
        return loss * 1024.0

    def step(self, optimizer):
        self.calls.append("step")
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad /= 1024.0
        optimizer.step()

    def update(self):
        self.calls.append("update")

    def get_scale(self):
        return 1024.0


def test_fp16_training_goes_through_the_gradient_scaler(monkeypatch):
    """GPUs before Ampere autocast to fp16 (tests/test_cuda.py runs that on a GPU); the trainer
    then scales each step's loss, steps through the scaler and updates its scale."""
    plain, _ = _train(0.0, [])
    scalers = patched_grad_scalers(monkeypatch, _PowerOfTwoScaler)
    scaled, _ = _train(0.0, [])
    assert scalers[0].calls == ["scale", "step", "update"] * 9  # 3 epochs x 3 batches
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_steps_the_scaler_skips_leave_the_weights_and_the_schedule_alone(monkeypatch, optimizer):
    """A real GradScaler, on the CPU, whose first scales overflow the loss: those steps are
    skipped (the scale halves each time), the schedule does not move for them (no "scheduler
    step before optimizer step" warning), and the steps that follow train."""
    import warnings

    scalers = real_cpu_grad_scalers(monkeypatch, init_scale=2.0 ** 127, growth_interval=1000)
    torch.manual_seed(0)
    start = TransferNet(load_backbone(TinyConv()), 8, 2, pooling="avg").state_dict()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the head's penalty makes the objective about 6: times 2**127 it overflows float32
        net, history = _train(10.0, [], optimizer=optimizer, lr_schedule="cosine", lr=0.01)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    skipped = 127 - int(np.log2(scalers[0].get_scale()))
    assert 0 < skipped < 9  # some of the 9 steps were skipped, not all
    assert all(np.isfinite(h["train_loss"]) for h in history)
    assert any(not torch.equal(value, start[key]) for key, value in net.state_dict().items())


def test_partial_fit_keeps_its_gradient_scaler_with_its_optimizer(monkeypatch, digits):
    """Under fp16 autocast each partial_fit call steps on the scale the earlier calls settled,
    not on a fresh one; a new optimizer (after a fit, or on another device) starts a new scale."""
    from sktransfer import FineTuneClassifier

    made = patched_grad_scalers(monkeypatch, _PowerOfTwoScaler)
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, batch_size=16, random_state=0)
    for _ in range(3):
        clf.partial_fit(X[:32], y[:32], classes=np.arange(10))
    kept = clf._partial_scaler
    assert kept is made[0] and kept.calls == ["scale", "step", "update"] * 6  # 3 calls x 2 batches
    clf.fit(X[:32], y[:32]).partial_fit(X[:32], y[:32])  # a new fit, then a new optimizer and scale
    assert clf._partial_scaler is made[-1] is not kept
