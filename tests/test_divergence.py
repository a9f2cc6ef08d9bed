"""Training that diverges raises instead of leaving NaN weights, and a network never hands back NaN
or inf: float16 overflow at inference is run again in float32 (GPUs of compute capability 7.x)."""

import warnings

import numpy as np
import pytest
import torch
from _tiny import large_output_linear, patched_grad_scalers, tiny_trainer, two_class_loss
from sklearn.exceptions import NotFittedError

from sktransfer import FineTuneClassifier, FineTuneRegressor
from sktransfer._inference import run_batches
from sktransfer.training._divergence import TrainingDiverged
from sktransfer.training._trainer import Phase, TrainSettings


@pytest.mark.parametrize("Estimator", [FineTuneClassifier, FineTuneRegressor])
def test_a_fit_that_diverges_raises_and_leaves_the_estimator_unfitted(digits, Estimator):
    images, _, y = digits
    X = images[:60].copy()
    before = X.copy()
    est = Estimator(image_size=32, max_epochs=3, min_steps=0, optimizer="sgd", lr=1e3, random_state=0)
    with pytest.raises(ValueError, match=r"Training diverged in epoch \d: ") as raised:
        est.fit(X, y[:60].astype(float) if Estimator is FineTuneRegressor else y[:60])
    assert isinstance(raised.value, TrainingDiverged)
    assert "lower lr (now 1000) or use optimizer='adamw'" in str(raised.value)
    with pytest.raises(NotFittedError):
        est.predict(X)
    np.testing.assert_array_equal(X, before)
    # the same estimator with a workable rate fits, and predicts finite values
    est.set_params(optimizer="adamw", lr=2e-3).fit(X, y[:60])
    assert np.isfinite(est.predict(X).astype(float)).all()


def test_a_continued_fit_that_diverges_keeps_the_weights_of_its_last_finite_step(digits):
    """warm_start: the step whose objective was not finite was not taken, so the network keeps
    finite weights (those of the step before), and what it predicts is finite."""
    images, _, y = digits
    clf = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=0, warm_start=True, random_state=0)
    clf.fit(images[:60], y[:60])
    clf.set_params(optimizer="sgd", lr=1e3, max_epochs=3)
    with pytest.raises(ValueError, match="Training diverged in epoch 3: a step's objective was"):
        clf.fit(images[:60], y[:60])
    assert all(torch.isfinite(value).all() for value in clf.net_.state_dict().values() if value.is_floating_point())
    assert np.isfinite(clf.predict_proba(images[:60])).all()


def test_a_first_partial_fit_that_diverges_leaves_the_estimator_unfitted(digits):
    images, _, y = digits
    clf = FineTuneClassifier(image_size=32, batch_size=16, optimizer="sgd", lr=1e3, random_state=0)
    with pytest.raises(ValueError, match="Training diverged in epoch 1"):
        clf.partial_fit(images[:60], y[:60], classes=np.arange(10))
    with pytest.raises(NotFittedError):
        clf.predict(images[:5])


@pytest.mark.parametrize("usable, weights, kept", [
    (True, "finite", True),  # raised before the step that would have spoilt them
    (True, "nan", False),  # ... but the weights are not finite (BatchNorm statistics of that step)
    (False, "finite", False),  # validation outputs not finite, or fp16 overflow after overflow
])
def test_a_continued_fit_that_diverged_keeps_its_network_only_while_it_is_usable(digits, usable, weights, kept):
    from sktransfer._fitting import fit_scope

    images, _, y = digits
    clf = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=0, random_state=0).fit(images[:40], y[:40])
    with pytest.raises(TrainingDiverged):
        with fit_scope(clf, fresh=False):
            if weights == "nan":
                with torch.no_grad():
                    clf.net_.backbone.model.bn1.running_var[0] = float("nan")
            raise TrainingDiverged("diverged", network_usable=usable)
    assert hasattr(clf, "net_") == kept


def test_under_fp16_partial_fit_counts_overflows_in_a_row_across_calls(monkeypatch, digits):
    """Each call is one epoch of two steps here: the fifth call's second step is the tenth
    overflow in a row, and the network, which overflows, is not kept."""
    patched_grad_scalers(monkeypatch, _CountingScaler)
    original = FineTuneClassifier._loss
    monkeypatch.setattr(FineTuneClassifier, "_loss", lambda self, *args: original(self, *args) * float("inf"))
    images, _, y = digits
    clf = FineTuneClassifier(image_size=32, batch_size=16, random_state=0)
    for call in range(4):
        with pytest.warns(RuntimeWarning, match="2 of 2 training steps were skipped"):
            clf.partial_fit(images[:32], y[:32], classes=np.arange(10))
    assert np.isnan([h["train_loss"] for h in clf.history_]).all()
    with pytest.raises(TrainingDiverged, match="overflowed in 10 steps in a row"):
        clf.partial_fit(images[:32], y[:32])
    assert not hasattr(clf, "net_")


class _Term:
    """A loss term: ``value(k)`` added at the k-th step (0-based), or nothing."""

    def __init__(self, net, value):
        self.net, self.at, self.calls = net, value, 0

    def __call__(self, step):
        extra = self.at(self.calls, self.net)
        self.calls += 1
        return extra

    def value(self):
        return 0.0


def _trainer(at, batch_size=4, overflowing_losses=()):
    """:func:`tiny_trainer`; ``at`` gives the loss term's value per step, and the task loss is inf
    at the calls in ``overflowing_losses``."""
    calls = []

    def loss(out, target, weight):
        calls.append(1)
        value = two_class_loss(out, target, weight)
        return value * float("inf") if len(calls) - 1 in overflowing_losses else value

    settings = TrainSettings(lr=0.05, batch_size=batch_size, lr_schedule="constant",
                             loss_terms=[lambda net: _Term(net, at)])
    return tiny_trainer(settings, loss)


def test_an_objective_that_is_not_finite_raises_before_its_step():
    start = None

    def at(k, net):
        nonlocal start
        if k == 4:
            start = {key: value.clone() for key, value in net.state_dict().items()}
            return torch.tensor(float("nan"))
        return None

    trainer, net, history = _trainer(at)
    with pytest.raises(TrainingDiverged, match=r"epoch 2: a step's objective was nan.*lower lr \(now 0.05\)\."):
        trainer.fit([Phase("fine_tune", 0, 3)], np.arange(12))
    assert len(history) == 1
    # the step was not taken: the weights are those before it, finite
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, start[key], rtol=0, atol=0)


def test_weights_that_a_finite_objective_made_nan_raise_at_the_end_of_the_epoch():
    """The square root's gradient at 0 is infinite: the objective is finite (0) and the last step
    of the first epoch makes the head's weights NaN; the epoch's check finds them."""

    def at(k, net):
        return torch.sqrt(net.head.weight.pow(2).sum() * 0.0) if k == 2 else None

    trainer, net, history = _trainer(at)
    with pytest.raises(TrainingDiverged, match="epoch 1: its weights are no longer finite"):
        trainer.fit([Phase("fine_tune", 0, 3)], np.arange(12))
    assert history == [] and not torch.isfinite(net.head.weight).all()


def test_validation_outputs_that_are_not_finite_are_divergence(monkeypatch):
    """Weights finite but huge can give outputs that are not: early stopping's validation says so
    as training divergence, not as a network of the user's that is broken."""
    import sktransfer.training._trainer as trainer_module
    from sktransfer._inference import NonFiniteOutput

    def not_finite(*args):
        raise NonFiniteOutput("not finite")

    monkeypatch.setattr(trainer_module, "predict_logits", not_finite)
    trainer, _, history = _trainer(lambda k, net: None)
    message = "epoch 1: its outputs on the validation images are not finite"
    with pytest.raises(TrainingDiverged, match=message) as raised:
        trainer.fit([Phase("fine_tune", 0, 3)], np.arange(8), valid_idx=np.arange(8, 12))
    assert isinstance(raised.value.__cause__, NonFiniteOutput)


class _CountingScaler:
    """A gradient scaler that scales by 1 and records its calls (fp16 autocast's path, on the CPU)."""

    def __init__(self):
        self.calls = 0

    def scale(self, loss):
        self.calls += 1
        return loss

    def step(self, optimizer):
        optimizer.step()

    def update(self):
        pass

    def get_scale(self):
        return 1.0


def test_under_fp16_a_step_whose_objective_overflowed_is_skipped_and_counted(monkeypatch):
    """float16 ends at 65504: a forward pass that overflows is not divergence, and GradScaler would
    lower its scale for it, which does not help. The step is skipped, the fit goes on and warns."""
    scalers = patched_grad_scalers(monkeypatch, _CountingScaler)
    trainer, net, history = _trainer(lambda k, net: torch.tensor(float("inf")) if k in (1, 5) else None)
    with pytest.warns(RuntimeWarning, match="2 of 9 training steps were skipped: under float16 autocast"):
        assert trainer.fit([Phase("fine_tune", 0, 3)], np.arange(12))
    assert scalers[0].calls == 7  # 9 steps, 2 skipped
    assert len(history) == 3 and all(np.isfinite(h["train_loss"]) for h in history)


def test_under_fp16_steps_that_overflow_in_a_row_raise(monkeypatch):
    """Ten steps in a row (or an epoch's, if more) that overflowed: the fit cannot go on."""
    patched_grad_scalers(monkeypatch, _CountingScaler)
    trainer, _, history = _trainer(lambda k, net: torch.tensor(float("inf")) if k >= 3 else None)
    with pytest.raises(TrainingDiverged, match="epoch 5: under float16 autocast the objective overflowed in 10 "
                                               "steps in a row"):
        trainer.fit([Phase("fine_tune", 0, 6)], np.arange(12))
    assert len(history) == 4  # 3 steps an epoch: the 10th overflow in a row is the 13th step


def test_under_fp16_a_fit_whose_every_step_overflowed_raises(monkeypatch):
    """Three epochs of one step, all overflowed: fewer than ten in a row, but nothing trained."""
    patched_grad_scalers(monkeypatch, _CountingScaler)
    trainer, _, history = _trainer(lambda k, net: None, batch_size=12, overflowing_losses=(0, 1, 2))
    every = "in every epoch: under float16 autocast the objective overflowed in all 3 steps of the fit"
    with pytest.raises(TrainingDiverged, match=every), pytest.warns(RuntimeWarning, match="3 of 3"):
        trainer.fit([Phase("fine_tune", 0, 3)], np.arange(12))
    assert len(history) == 3


def test_under_fp16_an_overflow_in_an_epoch_of_one_step_does_not_raise(monkeypatch):
    """A fit of few images (or a partial_fit call) has one step an epoch: one overflow skips it."""
    patched_grad_scalers(monkeypatch, _CountingScaler)
    trainer, _, history = _trainer(lambda k, net: None, batch_size=12, overflowing_losses=(1,))
    with pytest.warns(RuntimeWarning, match="1 of 3 training steps were skipped"):
        assert trainer.fit([Phase("fine_tune", 0, 3)], np.arange(12))
    losses = [h["train_loss"] for h in history]
    assert np.isfinite(losses[0]) and np.isnan(losses[1]) and np.isfinite(losses[2])  # no loss, not 0


def _collect(fn, batches, device=torch.device("cpu")):
    out = {}
    run_batches(fn, batches, device, lambda start, stop, o: out.__setitem__(start, o.clone()))
    return out


def test_outputs_that_overflow_float16_are_run_again_in_float32(monkeypatch):
    import sktransfer._inference as inference

    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("CPU autocast")
    # what a GPU of compute capability 7.x does (tests/test_cuda.py reports 7.5 on a real GPU)
    monkeypatch.setattr(inference, "amp_dtype", lambda device: torch.float16)
    monkeypatch.setattr(inference, "autocast", lambda device: torch.autocast("cpu", dtype=torch.float16))
    net = large_output_linear()
    small, large = torch.ones(3, 4), torch.full((3, 4), 100.0)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not torch.isfinite(net(large)).all()  # the overflow this test is about
    with pytest.warns(RuntimeWarning, match="rows 3-5 overflowed float16 autocast") as caught:
        out = _collect(net, [(0, 3, small), (3, 6, large), (6, 9, large)])
    assert len([w for w in caught if "overflowed" in str(w.message)]) == 1  # once per call
    with torch.no_grad():
        torch.testing.assert_close(out[3], net(large), rtol=0, atol=0)  # float32's values exactly
        torch.testing.assert_close(out[6], net(large), rtol=0, atol=0)
        # the batch that fit float16 kept its float16 values
        assert out[0].dtype == torch.float32 and torch.allclose(out[0], net(small), rtol=1e-2)


def test_outputs_that_are_not_finite_in_float32_raise():
    net = large_output_linear()  # 4e39 for inputs of 1e36: beyond float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no float32 rerun of a float32 output
        with pytest.raises(ValueError, match=r"output for rows 2-3 is not finite \(NaN or inf\) in float32"):
            _collect(net, [(0, 2, torch.ones(2, 4)), (2, 4, torch.full((2, 4), 1e36))])
