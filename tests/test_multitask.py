"""Issue 8: multi-task heads, task_weights (L_S + lambda * L_T literally), FineTuneRegressor."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sktransfer
from sktransfer import FineTuneClassifier, FineTuneRegressor
from sktransfer.training._objectives import classification_loss, regression_loss

FAST = dict(image_size=32, batch_size=16, max_epochs=1, min_steps=0, random_state=0)


@pytest.fixture(scope="module")
def data(digits):
    _, table, target = digits
    return table[:64], target[:64]


def two_tasks(y, missing_every=3):
    """Digit identity (some labels missing) and parity, as floats with NaN gaps."""
    Y = np.column_stack([y, y % 2]).astype(float)
    Y[::missing_every, 0] = np.nan
    return Y


# ---------------------------------------------------------------- the objective
def test_task_weights_give_source_plus_lambda_target_literally():
    torch.manual_seed(0)
    logits = torch.randn(6, 5 + 2)
    target = torch.tensor([[0, 1], [4, -1], [-1, 0], [2, 1], [3, 0], [1, -1]])
    weight = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 1.0])
    lam = 0.3
    got = classification_loss(logits, target, weight, [5, 2], [1.0, lam])
    src = target[:, 0] >= 0
    tgt = target[:, 1] >= 0
    l_s = (F.cross_entropy(logits[src, :5], target[src, 0], reduction="none") * weight[src]).sum() / weight[src].sum()
    l_t = (F.cross_entropy(logits[tgt, 5:], target[tgt, 1], reduction="none") * weight[tgt]).sum() / weight[tgt].sum()
    torch.testing.assert_close(got, l_s + lam * l_t)


def test_regression_loss_skips_missing_values_and_supports_huber():
    pred = torch.tensor([[0.0, 1.0], [2.0, -1.0], [1.0, 3.0]])
    target = torch.tensor([[0.5, float("nan")], [0.0, 0.0], [float("nan"), 0.0]])
    weight = torch.ones(3)
    got = regression_loss(pred, target, weight, [1.0, 2.0])
    expected = 0.5 * (0.25 + 4.0) / 2 + 2.0 * 0.5 * (1.0 + 9.0) / 2
    assert float(got) == pytest.approx(expected)
    huber = regression_loss(pred, target, weight, [1.0, 0.0], loss="huber", delta=1.0)
    assert float(huber) == pytest.approx((0.125 + 1.5) / 2)


# ---------------------------------------------------------------- the classifier
def test_multi_task_classifier_follows_sklearn_multi_output_conventions(data):
    X, y = data
    Y = two_tasks(y)
    clf = FineTuneClassifier(task_weights=[1.0, 0.5], **FAST).fit(X, Y)
    assert clf.n_outputs_ == 2 and isinstance(clf.classes_, list)
    np.testing.assert_array_equal(clf.classes_[1], [0.0, 1.0])
    pred = clf.predict(X)
    assert pred.shape == (64, 2)
    proba = clf.predict_proba(X)
    assert [p.shape for p in proba] == [(64, 10), (64, 2)]
    for t in range(2):
        np.testing.assert_array_equal(clf.classes_[t][proba[t].argmax(1)], pred[:, t])
        np.testing.assert_allclose(proba[t].sum(1), 1.0)
    assert not hasattr(clf, "decision_function")  # single-task only
    assert 0.0 <= clf.score(X, Y) <= 1.0


def test_missing_labels_are_skipped_not_learned(data, monkeypatch):
    """A task's loss sees only its labelled samples: changing a missing
    sample's other-task label changes nothing in that task's targets."""
    import sktransfer._classifier as mod

    X, y = data
    seen = []
    original = mod.classification_loss

    def spy(logits, target, *args, **kwargs):
        seen.append(target.clone())
        return original(logits, target, *args, **kwargs)

    monkeypatch.setattr(mod, "classification_loss", spy)
    Y = np.column_stack([y.astype(object), np.where(y % 2, "odd", "even").astype(object)])
    Y[::2, 1] = None
    clf = FineTuneClassifier(**FAST).fit(X, Y)
    targets = torch.cat(seen)
    assert (targets[:, 1] == -1).sum() == 32 and set(targets[:, 1].tolist()) == {-1, 0, 1}
    assert list(clf.classes_[1]) == ["even", "odd"]
    ints = np.column_stack([y, y % 2])
    ints[::2, 1] = -1
    as_int = FineTuneClassifier(missing_label=-1, **FAST).fit(X, ints)
    assert list(as_int.classes_[1]) == [0, 1] and as_int.predict(X).dtype.kind == "i"


@pytest.mark.parametrize("params, y_change, match", [
    ({"task_weights": [1.0]}, None, "task_weights must be None or 2 non-negative numbers"),
    ({"task_weights": [0.0, 0.0]}, None, "not all zero"),
    ({"class_weight": "balanced"}, None, "class_weight works with a single task"),
    ({}, "one_class", "at least 2 classes in task 1"),
])
def test_multi_task_errors(data, params, y_change, match):
    X, y = data
    Y = two_tasks(y)
    if y_change == "one_class":
        Y[:, 1] = 1.0
    with pytest.raises(ValueError, match=match):
        FineTuneClassifier(**FAST, **params).fit(X, Y)


def test_single_task_y_cannot_have_missing_labels(data):
    X, y = data
    with pytest.raises(ValueError, match="NaN"):
        FineTuneClassifier(**FAST).fit(X, np.where(np.arange(64) % 5, y, np.nan))


def test_grid_search_over_task_weights(data):
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV, KFold

    X, y = data
    Y = two_tasks(y)

    def parity_accuracy(y_true, y_pred):
        return float(np.mean(y_true[:, 1] == y_pred[:, 1]))

    grid = {"task_weights": [[1.0, 0.1], [1.0, 1.0]]}
    # NaN labels make scikit-learn's default cv (type_of_target) refuse y: pass a splitter
    search = GridSearchCV(FineTuneClassifier(**FAST), grid, cv=KFold(2), scoring=make_scorer(parity_accuracy))
    search.fit(X, Y)
    assert len(search.cv_results_["params"]) == 2
    assert search.best_params_["task_weights"] in grid["task_weights"]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    # with integer labels and missing_label=-1 the default cv works
    ints = np.column_stack([y, y % 2])
    ints[::3, 0] = -1
    default_cv = GridSearchCV(FineTuneClassifier(missing_label=-1, **FAST), grid, cv=2).fit(X, ints)
    assert default_cv.best_params_["task_weights"] in grid["task_weights"]


# ---------------------------------------------------------------- the regressor
def test_regressor_learns_in_standardised_units(data):
    X, y = data
    y = y.astype(float)
    kw = dict(FAST, max_epochs=2)
    base = FineTuneRegressor(**kw).fit(X, y)
    shifted = FineTuneRegressor(**kw).fit(X, 1000 * y + 5)
    # the same training on standardised targets: predictions map back exactly
    np.testing.assert_allclose(shifted.predict(X), 1000 * base.predict(X) + 5, rtol=1e-4, atol=1e-2)
    assert base.y_mean_[0] == pytest.approx(y.mean()) and base.y_scale_[0] == pytest.approx(y.std())
    assert base.history_[-1]["train_loss"] < base.history_[0]["train_loss"]


def test_regressor_multi_output_with_missing_values_and_huber(data):
    X, y = data
    Y = np.column_stack([y, X.mean(1)]).astype(float)
    Y[::4, 1] = np.nan
    reg = FineTuneRegressor(loss="huber", task_weights=[1.0, 2.0], **FAST).fit(X, Y)
    pred = reg.predict(X)
    assert pred.shape == (64, 2) and np.all(np.isfinite(pred))
    assert np.isfinite(reg.score(X, Y))
    with pytest.raises(ValueError, match="cannot have missing values"):
        FineTuneRegressor(**FAST).fit(X, np.where(np.arange(64) % 5, y, np.nan))
    with pytest.raises(ValueError, match=r"'loss' parameter of \w+ must be"):
        FineTuneRegressor(loss="l1", **FAST).fit(X, y)
    with pytest.raises(ValueError, match=r"'huber_delta' parameter of \w+ must be"):
        FineTuneRegressor(huber_delta=0, **FAST).fit(X, y)


def test_regressor_freezes_and_regularises_like_the_classifier(data):
    X, y = data
    reg = FineTuneRegressor(freeze_depth=3, reg_lambda=0.1, linear_probe_epochs=1, **FAST).fit(X, y.astype(float))
    assert reg.n_frozen_stages_ == 3
    assert [h["phase"] for h in reg.history_] == ["linear_probe", "fine_tune"]
    # the recorded penalty is λ/2 ||w - w_pretrained||² over the trainable backbone weights, which moved
    anchor = reg._anchor_state()
    distance = sum(float(((p.detach() - anchor[n]) ** 2).sum())
                   for n, p in reg.net_.backbone.model.named_parameters() if p.requires_grad)
    assert distance > 0
    assert reg.history_[-1]["penalty"] == pytest.approx(0.5 * 0.1 * distance, rel=1e-4)
    frozen = [n for _, names in reg.net_.backbone.stages[:3] for n in names]
    assert all(torch.equal(reg.net_.backbone.model.get_parameter(n).detach(), anchor[n]) for n in frozen)


def test_multi_task_estimators_round_trip_through_save(data, tmp_path):
    X, y = data
    clf = FineTuneClassifier(**FAST).fit(X, two_tasks(y))
    reg = FineTuneRegressor(**FAST).fit(X, np.column_stack([y, y % 3]).astype(float))
    for est in (clf, reg):
        path = tmp_path / f"{type(est).__name__}.safetensors"
        est.save(path)
        loaded = sktransfer.load(path)
        np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def test_scores_check_lengths_and_the_regressor_scores_missing_values_in_float64(data):
    X, y = data
    clf = FineTuneClassifier(**FAST).fit(X, two_tasks(y))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clf.score(X[:10], two_tasks(y)[:12])
    Y = np.column_stack([y, X.mean(1)]).astype(float) + 1e7  # large offsets: float32 R² would be off
    Y[::4, 1] = np.nan
    reg = FineTuneRegressor(**FAST).fit(X, Y)
    with pytest.raises(ValueError, match="10 images and y has 12 rows"):
        reg.score(X[:10], Y[:12])
    from sklearn.metrics import r2_score

    pred = reg.predict(X)
    known = ~np.isnan(Y[:, 1])
    expected = np.mean([r2_score(Y[:, 0], pred[:, 0]), r2_score(Y[known, 1], pred[known, 1])])
    assert reg.score(X, Y) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_nan_as_missing_label_marks_the_nan_rows(data):
    X, y = data
    Y = two_tasks(y)
    by_nan = FineTuneClassifier(missing_label=np.nan, **FAST).fit(X, Y)
    by_default = FineTuneClassifier(**FAST).fit(X, Y)  # None: NaN marks missing labels too
    for a, b in zip(by_nan.classes_, by_default.classes_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(by_nan.predict_proba(X[:8])[0], by_default.predict_proba(X[:8])[0])
    single = np.where(np.arange(64) % 5, y, np.nan)
    clf = FineTuneClassifier(missing_label=np.nan, **FAST).fit(X, single)
    np.testing.assert_array_equal(clf.classes_, np.unique(y[np.arange(64) % 5 > 0]))
