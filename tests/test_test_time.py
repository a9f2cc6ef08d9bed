"""test_time_augment: a few-image classifier averages its probabilities over each image and fixed warps of it."""

import copy
import pickle

import numpy as np
import pytest
import torch

from sktransfer import FineTuneClassifier, RandomAffine, load
from sktransfer._compat import earlier_finetune_state
from sktransfer._test_time import AUTO_VIEWS, ViewAverage, resolve_test_time_augment
from sktransfer.data._augment import warp

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)


def _fit(X, y, **kw):
    return FineTuneClassifier(**{"image_size": 32, "max_epochs": 1, "min_steps": 20, "random_state": 0,
                                 **kw}).fit(X, y)


def _rgb32(images):
    """8x8 digits as 32x32 RGB arrays in [0, 16]: the network's input size, so that predicting
    resizes nothing and a warp of these arrays is the warp of the prepared batch."""
    t = torch.as_tensor(images, dtype=torch.float32)[:, None]
    t = torch.nn.functional.interpolate(t, size=32, mode="bilinear", align_corners=False)
    return t.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy().copy()


@pytest.fixture(scope="module")
def data(digits):
    images, _, y = digits
    return _rgb32(images[:600]), y[:600]


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return _fit(X[:60], y[:60])


def _without_views(clf):
    plain = copy.deepcopy(clf)
    plain.test_time_views_ = np.zeros((0, 2, 3), np.float32)
    return plain


def test_auto_draws_eight_views_with_few_images_from_the_training_augmentation(fitted):
    assert fitted.test_time_augment_ == AUTO_VIEWS == 8
    views = fitted.test_time_views_
    assert views.shape == (8, 2, 3)
    expected = RandomAffine().draw(8, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_array_equal(views, expected)  # drawn once, seed 0: the same for every fit
    assert np.abs(views - IDENTITY).max() > 0.05  # real warps, not the image again


@pytest.mark.parametrize("setting, n_train, augment, adapting, expected", [
    ("auto", 319, RandomAffine(), False, 8), ("auto", 320, RandomAffine(), False, 0),
    ("auto", 20, None, False, 0), ("auto", 20, lambda x: x, False, 0), ("auto", 20, RandomAffine(), True, 0),
    (3, 5000, RandomAffine(), False, 3), (0, 20, RandomAffine(), False, 0),
])
def test_auto_is_on_with_few_images_and_an_affine_augmentation_only(setting, n_train, augment, adapting, expected):
    assert resolve_test_time_augment(setting, n_train, 32, augment, adapting) == expected


def test_predictions_are_the_mean_over_the_image_and_its_warped_views(data, fitted):
    """A view is the image warped: predicting on arrays warped by hand with the view's matrix, without
    test-time augmentation, gives that view's probabilities."""
    X = data[0][300:340]
    clf = copy.deepcopy(fitted)
    clf.test_time_views_ = fitted.test_time_views_[:2]
    plain = _without_views(clf)
    members = [plain.predict_proba(X)]
    for theta in clf.test_time_views_:
        warped = warp(torch.as_tensor(X).permute(0, 3, 1, 2), torch.as_tensor(theta)[None])
        members.append(plain.predict_proba(warped.permute(0, 2, 3, 1).numpy()))
    np.testing.assert_allclose(clf.predict_proba(X), np.mean(members, 0), atol=2e-5)
    assert np.abs(members[1] - members[0]).max() > 0.05  # the views moved the probabilities


def test_identity_views_change_nothing_and_real_ones_do(data, fitted):
    X, _ = data
    plain = _without_views(fitted)
    same = copy.deepcopy(fitted)
    same.test_time_views_ = np.stack([IDENTITY] * 3)
    np.testing.assert_allclose(same.predict_proba(X[300:360]), plain.predict_proba(X[300:360]), atol=1e-5)
    assert np.abs(fitted.predict_proba(X[300:360]) - plain.predict_proba(X[300:360])).max() > 0.02
    np.testing.assert_allclose(np.exp(fitted.predict_log_proba(X[300:360])), fitted.predict_proba(X[300:360]),
                               atol=1e-6)
    np.testing.assert_array_equal(fitted.predict(X[300:360]),
                                  fitted.classes_[fitted.decision_function(X[300:360]).argmax(1)])


def test_an_images_prediction_does_not_depend_on_its_batch(data, fitted):
    X, _ = data
    together = fitted.predict_proba(X[300:340])
    order = np.random.RandomState(0).permutation(40)
    np.testing.assert_allclose(fitted.predict_proba(X[300:340][order]), together[order], atol=1e-6)
    np.testing.assert_allclose(fitted.predict_proba(X[310:312]), together[10:12], atol=1e-6)


def test_both_networks_of_the_probe_ensemble_see_every_view(fitted):
    from sktransfer._probe_ensemble import ProbeAverage

    assert fitted.probe_net_ is not None
    module = fitted._prediction_net()
    assert isinstance(module, ViewAverage) and isinstance(module.net, ProbeAverage)


def test_view_average_is_the_log_of_the_mean_probabilities_per_task():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(6, 3, 4, 4)
    views = RandomAffine().draw(3, torch.Generator().manual_seed(1))
    out = ViewAverage(net, views, [2, 3])(x)
    batches = [x] + [warp(x, v[None]) for v in views]
    for cols in (slice(0, 2), slice(2, 5)):  # each task's probabilities averaged on their own
        expected = torch.stack([net(b)[:, cols].softmax(1) for b in batches]).mean(0)
        torch.testing.assert_close(out[:, cols].exp(), expected)


def test_views_survive_pickle_save_and_load(data, fitted, tmp_path):
    X, _ = data
    expected = fitted.predict_proba(X[400:430])
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.test_time_views_, fitted.test_time_views_)
    np.testing.assert_array_equal(again.predict_proba(X[400:430]), expected)
    fitted.save(tmp_path / "clf.sktransfer")
    loaded = load(tmp_path / "clf.sktransfer")
    assert loaded.test_time_augment_ == 8
    np.testing.assert_allclose(loaded.predict_proba(X[400:430]), expected, atol=1e-6)


def test_an_explicit_number_of_views_and_off(data):
    X, y = data
    many = _fit(X[:400], y[:400], batch_size=16, max_epochs=1, test_time_augment=2)  # 25 batches: auto is off
    assert many.test_time_augment_ == 2 and many.test_time_views_.shape == (2, 2, 3)
    off = _fit(X[:60], y[:60], test_time_augment=0)
    assert off.test_time_augment_ == 0 and off.test_time_views_.shape == (0, 2, 3)
    assert not isinstance(off._prediction_net(), ViewAverage)
    assert _fit(X[:400], y[:400], batch_size=16, max_epochs=1).test_time_augment_ == 0


def test_flips_in_training_give_flipped_views(data):
    X, y = data
    clf = _fit(X[:60], y[:60], augment="flip")
    assert (clf.test_time_views_[:, 0, 0] < 0).any() and (clf.test_time_views_[:, 0, 0] > 0).any()


@pytest.mark.parametrize("augment", [False, None, lambda x: x])
def test_views_asked_for_without_an_affine_augmentation_are_refused(data, augment):
    X, y = data
    with pytest.raises(ValueError, match="test_time_augment=4 .* affine warp"):
        _fit(X[:40], y[:40], augment=augment, test_time_augment=4)
    with pytest.raises(ValueError, match="test_time_augment=4 .* affine warp"):
        FineTuneClassifier(image_size=32, augment=augment, test_time_augment=4).partial_fit(X[:40], y[:40],
                                                                                            classes=np.arange(10))
    assert _fit(X[:40], y[:40], augment=augment).test_time_augment_ == 0  # "auto": off


@pytest.mark.parametrize("value", [-1, 2.5, True, "yes"])
def test_bad_values_are_refused(data, value):
    X, y = data
    with pytest.raises(ValueError, match="test_time_augment"):
        _fit(X[:40], y[:40], test_time_augment=value)


def test_estimators_from_before_test_time_augmentation_predict_without_it():
    state = earlier_finetune_state({"missing_label": None, "net_": object()})
    assert state["test_time_augment"] == 0 and state["test_time_augment_"] == 0
    assert state["test_time_views_"].shape == (0, 2, 3)
    assert "test_time_views_" not in earlier_finetune_state({"net_": object()})  # a regressor has none


def test_no_views_keep_their_shape_through_save_and_load(data, tmp_path):
    X, y = data
    off = _fit(X[:40], y[:40], test_time_augment=0)
    off.save(tmp_path / "off.sktransfer")
    assert load(tmp_path / "off.sktransfer").test_time_views_.shape == (0, 2, 3)


def test_a_teacher_teaches_in_one_pass_without_the_views(data, fitted):
    from sktransfer._distillation import teacher_probabilities

    X, _ = data
    taught = teacher_probabilities(fitted, X[300:340], 40, batch=16)
    one_pass = torch.softmax(fitted._logits(X[300:340], fitted.net_).double(), 1).numpy()
    np.testing.assert_allclose(taught, one_pass, atol=1e-6)
    assert np.abs(taught - fitted.predict_proba(X[300:340])).max() > 0.05


def test_warp_keeps_float32_under_autocast_and_the_memory_format():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    theta = RandomAffine().draw(2, torch.Generator().manual_seed(0))
    expected = warp(x, theta)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = warp(x, theta)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, expected, rtol=0, atol=0)  # a bf16 grid would move samples
    last = warp(x.contiguous(memory_format=torch.channels_last), theta)
    assert last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(last, expected)
