"""Knowledge distillation: the KD objective, unlabelled rows taught by the teacher alone, the teacher
parameter through clone, GridSearchCV, save and pickle."""

import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny import IndexedImages, TinyConv
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from sktransfer import FineTuneClassifier, load, load_backbone
from sktransfer.training._distillation import DistillTerm, soften
from sktransfer.training._network import TransferNet
from sktransfer.training._objectives import classification_loss, classification_score
from sktransfer.training._trainer import Phase, Trainer, TrainSettings


def _one_step(x, y, w, proba, temperature, beta, rows=None):
    """One SGD step of the trainer over ``rows`` (one batch) with the KD term; returns (net before, after)."""
    torch.manual_seed(0)
    net = TransferNet(load_backbone(TinyConv(4)), 4, 3, pooling="avg")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    soft = soften(proba, temperature)
    weight = torch.as_tensor(w, dtype=torch.float32)
    rows = np.arange(len(x)) if rows is None else rows
    settings = TrainSettings(
        optimizer="sgd", lr=0.1, weight_decay=0.0, lr_schedule="constant", batch_size=len(rows),
        loss_terms=[lambda net: DistillTerm(soft, weight, temperature, beta)], task_weight=1 - beta,
    )

    def loss(out, target, weight):
        return classification_loss(out, target, weight, [3], np.ones(1))

    def score(out, target, weight):
        return classification_score(out, target, weight, [3])

    trainer = Trainer(net, IndexedImages(x), y, w, loss, score, settings, torch.device("cpu"), np.random.RandomState(0), [])
    trainer.fit([Phase("fine_tune", 0, 1)], rows)
    return before, net


def _hand_objective(net, x, y, w, proba, tau, beta):
    """α·CE + (1−α)·τ²·KL written out, α = 1 − beta: CE over labelled rows, KL over all, weighted means."""
    logits = net(x)
    w = torch.as_tensor(w, dtype=torch.float32)
    labelled = torch.as_tensor(y) >= 0
    log_p = torch.log_softmax(logits[labelled], 1)
    ce = -(w[labelled] * log_p[torch.arange(int(labelled.sum())), torch.as_tensor(y)[labelled]]).sum() \
        / w[labelled].sum()
    q = torch.as_tensor(proba, dtype=torch.float64) ** (1 / tau)
    q = (q / q.sum(1, keepdim=True)).float()
    kl = (q * (torch.log(q) - torch.log_softmax(logits / tau, 1))).sum(1)
    return (1 - beta) * ce + beta * tau ** 2 * (w * kl).sum() / w.sum()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, 8, 8, generator=g)
    y = np.array([0, 1, 2, 0, 1, -1, -1, -1, -1, -1])
    w = np.linspace(0.5, 2.0, 10).astype(np.float32)
    proba = torch.softmax(torch.randn(10, 3, generator=g) * 2, 1).double().numpy()
    return x, y, w, proba


def test_the_step_objective_is_alpha_ce_plus_tau_squared_kl(batch):
    x, y, w, proba = batch
    tau, beta = 3.0, 0.7
    before, after = _one_step(x, y, w, proba, tau, beta)
    net = TransferNet(load_backbone(TinyConv(4)), 4, 3, pooling="avg")
    net.load_state_dict(before)
    objective = _hand_objective(net, x, y, w, proba, tau, beta)
    grads = torch.autograd.grad(objective, list(net.parameters()))
    # SGD with Nesterov momentum 0.9: the first step moves by lr * 1.9 * gradient
    for (name, p), g in zip(net.named_parameters(), grads):
        torch.testing.assert_close(before[name] - after.state_dict()[name], 0.1 * 1.9 * g, rtol=1e-4, atol=1e-6)


def test_unlabelled_rows_count_only_through_the_teacher(batch):
    x, y, w, proba = batch
    labelled = np.flatnonzero(y >= 0)
    # without the KD term, the unlabelled rows change nothing: the step equals one on the labelled rows
    _, all_rows = _one_step(x, y, w, proba, 2.0, 0.0)
    _, labelled_only = _one_step(x, y, w, proba, 2.0, 0.0, rows=labelled)
    for key, value in all_rows.state_dict().items():
        torch.testing.assert_close(value, labelled_only.state_dict()[key], rtol=1e-5, atol=1e-7)
    # with it, what the teacher says of an unlabelled row moves the network
    _, taught = _one_step(x, y, w, proba, 2.0, 0.5)
    other = proba.copy()
    other[7] = other[7][::-1]
    _, retaught = _one_step(x, y, w, other, 2.0, 0.5)
    assert not torch.allclose(taught.head.weight, retaught.head.weight)


def test_soften_is_the_softmax_of_the_logits_over_the_temperature():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(soften(torch.softmax(logits, 1), 4.0), torch.softmax(logits / 4, 1).float())
    divergence = F.kl_div(torch.log_softmax(logits.float(), 1), soften(torch.softmax(logits, 1), 1.0),
                          reduction="none").sum(1)
    torch.testing.assert_close(divergence, torch.zeros(2), atol=1e-6, rtol=0)


class _CountingTeacher(LogisticRegression):
    """A LogisticRegression that counts the rows its predict_proba sees."""

    calls = []

    def predict_proba(self, X):
        type(self).calls.append(len(X))
        return super().predict_proba(X)


@pytest.fixture(scope="module")
def shifted_teacher(digits):
    """A teacher that is confidently wrong in a known way: it says digit d is (d + 1) % 10."""
    _, X, y = digits
    return _CountingTeacher(max_iter=2000).fit(X, (y + 1) % 10)


def test_the_student_learns_the_teacher_on_unlabelled_rows(digits, shifted_teacher):
    _, X, y = digits
    X_fit = X[:600]
    y_fit = np.full(600, -1)
    y_fit[:30] = y[:30]  # 30 labelled rows, 570 unlabelled
    _CountingTeacher.calls.clear()
    student = FineTuneClassifier(
        image_size=32, max_epochs=2, min_steps=40, missing_label=-1, teacher=shifted_teacher,
        distill_weight=1.0, random_state=0,
    ).fit(X_fit, y_fit)
    # the teacher's probabilities: once per fit, in batches of at most 512 rows (not once an epoch)
    assert _CountingTeacher.calls == [512, 88]
    X_test, y_test = X[1000:1300], y[1000:1300]
    agrees = np.mean(student.predict(X_test) == shifted_teacher.predict(X_test))
    # distill_weight=1: the labels are not learned, the teacher's (shifted) answers are
    assert agrees > 0.6 and student.score(X_test, y_test) < 0.3
    # nothing of the teacher is kept after fit but the parameter itself
    assert [k for k, v in vars(student).items() if v is shifted_teacher] == ["teacher"]
    assert student._teacher_proba is None


def test_a_teacher_with_other_classes_or_unfitted_raises(digits):
    _, X, y = digits
    five = LogisticRegression(max_iter=500).fit(X[:200][y[:200] < 5], y[:200][y[:200] < 5])
    student = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=2, random_state=0).fit(X[:40], y[:40])
    before = student.predict_proba(X[:5])
    with pytest.raises(ValueError, match=r"same classes_.*same order"):
        student.set_params(teacher=five).fit(X[:40], y[:40])
    # the refused refit changed nothing: the fitted student still predicts as before
    np.testing.assert_array_equal(student.classes_, np.arange(10))
    np.testing.assert_array_equal(student.predict_proba(X[:5]), before)
    with pytest.raises(ValueError, match="teacher__"):
        student.set_params(teacher__C=2.0)  # a shared fitted teacher is never changed through a student
    assert five.C == 1.0
    with pytest.raises(ValueError, match="not fitted|no classes_"):
        FineTuneClassifier(image_size=32, teacher=LogisticRegression(), max_epochs=1).fit(X[:40], y[:40])
    with pytest.raises(ValueError, match="single-task"):
        FineTuneClassifier(image_size=32, teacher=five, max_epochs=1, missing_label=-1).fit(
            X[:40], np.column_stack([y[:40], y[:40]]))
    with pytest.raises(ValueError, match="adaptation='coral'"):
        ten = LogisticRegression(max_iter=500).fit(X[:300], y[:300])
        FineTuneClassifier(image_size=32, teacher=ten, adaptation="coral", max_epochs=1).fit(X[:40], y[:40])
    with pytest.raises(ValueError, match="teacher"):  # no predict_proba
        FineTuneClassifier(image_size=32, teacher=object()).fit(X[:40], y[:40])


def test_distill_weight_zero_uses_no_teacher(digits, shifted_teacher):
    """Weight 0: the teacher is not asked, and the unlabelled rows are left out as without one."""
    _, X, y = digits
    y_fit = np.where(np.arange(120) < 40, y[:120], -1)
    params = dict(image_size=32, max_epochs=1, min_steps=6, missing_label=-1, random_state=0)
    _CountingTeacher.calls.clear()
    zero = FineTuneClassifier(teacher=shifted_teacher, distill_weight=0.0, **params).fit(X[:120], y_fit)
    assert _CountingTeacher.calls == []
    plain = FineTuneClassifier(**params).fit(X[:120], y_fit)
    np.testing.assert_array_equal(zero.predict_proba(X[200:230]), plain.predict_proba(X[200:230]))


def test_clone_and_grid_search_share_the_fitted_teacher(digits):
    _, X, y = digits
    teacher = LogisticRegression(max_iter=2000).fit(X[:600], y[:600])
    student = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=10, teacher=teacher, random_state=0)
    copy = clone(student)
    assert copy.teacher is teacher and copy is not student
    assert clone(student.set_params(distill_weight=0.0)).teacher is teacher
    student.set_params(distill_weight=0.5)
    search = GridSearchCV(student, {"distill_temperature": [1.0, 4.0], "distill_weight": [0.5, 0.9]}, cv=2)
    search.fit(X[:120], y[:120])
    assert len(search.cv_results_["params"]) == 4
    assert search.best_estimator_.teacher is teacher
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.cv_results_["mean_test_score"].max() > 0.5


def test_a_distilled_student_pickles_and_saves_without_its_teacher(digits, tmp_path, shifted_teacher):
    _, X, y = digits
    y_fit = np.where(np.arange(200) < 40, y[:200], -1)
    student = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=10, missing_label=-1,
                                 teacher=shifted_teacher, random_state=0).fit(X[:200], y_fit)
    expected = student.predict_proba(X[300:340])
    restored = pickle.loads(pickle.dumps(student))
    np.testing.assert_allclose(restored.predict_proba(X[300:340]), expected, rtol=1e-5, atol=1e-6)
    assert isinstance(restored.teacher, LogisticRegression)  # a parameter: pickles keep it
    path = tmp_path / "student.safetensors"
    with pytest.warns(UserWarning, match="teacher="):
        student.save(path)
    loaded = load(path)
    assert loaded.teacher is None and loaded.distill_weight == student.distill_weight
    np.testing.assert_allclose(loaded.predict_proba(X[300:340]), expected, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # without a teacher, save has nothing to leave out
        clone(student).set_params(teacher=None).fit(X[:40], y[:40]).save(tmp_path / "plain.safetensors")
