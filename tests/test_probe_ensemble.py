"""probe_ensemble: a few-image classifier averages its fine-tuned network with the probe it started from."""

import pickle

import numpy as np
import pytest
import torch

from sktransfer import FineTuneClassifier, fuse, load, load_backbone
from sktransfer._compat import earlier_finetune_state
from sktransfer._finetune import BaseFineTune
from sktransfer._probe_ensemble import ProbeAverage


def _fit(X, y, **kw):  # without test-time augmentation: the probe ensemble on its own (test_test_time.py)
    return FineTuneClassifier(**{"image_size": 32, "max_epochs": 2, "random_state": 0, "test_time_augment": 0,
                                 **kw}).fit(X, y)


@pytest.fixture(scope="module")
def pair(digits):
    _, X, y = digits
    return _fit(X[:80], y[:80]), _fit(X[:80], y[:80], probe_ensemble=False)


def _softmax(clf, X, net=None):
    return torch.softmax(BaseFineTune._logits(clf, X, clf.net_ if net is None else net).double(), 1).numpy()


def test_predictions_are_the_mean_of_the_two_networks_probabilities(digits, pair):
    _, X, y = digits
    clf, alone = pair
    proba = clf.predict_proba(X[300:360])
    fine_tuned, probe = _softmax(clf, X[300:360]), _softmax(clf, X[300:360], clf.probe_net_)
    np.testing.assert_allclose(proba, (fine_tuned + probe) / 2, atol=1e-6)
    assert np.abs(fine_tuned - probe).max() > 0.1  # two different networks were averaged
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X[300:360])), proba, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(X[300:360]), clf.classes_[clf.decision_function(X[300:360]).argmax(1)])
    # keeping the probe draws no random numbers: the fine-tuned network is the one trained without it
    assert alone.probe_net_ is None
    np.testing.assert_allclose(alone.predict_proba(X[300:360]), fine_tuned, atol=1e-6)


def test_the_probe_is_the_pretrained_backbone_with_the_solved_head(digits, pair):
    _, X, y = digits
    clf, _ = pair
    pretrained = load_backbone("efficientnet_lite0").model.state_dict()
    probe = clf.probe_net_.backbone.model.state_dict()
    for key in ("conv_stem.weight", "blocks.1.0.conv_pw.weight", "bn1.running_var"):
        torch.testing.assert_close(probe[key], pretrained[key])
    assert not torch.equal(clf.net_.backbone.model.state_dict()["conv_stem.weight"], pretrained["conv_stem.weight"])
    assert not any(p.requires_grad for p in clf.probe_net_.parameters()) and not clf.probe_net_.training
    # the solved head alone already classifies the training digits
    probe_pred = clf.classes_[_softmax(clf, X[:80], clf.probe_net_).argmax(1)]
    assert (probe_pred == y[:80]).mean() > 0.9


@pytest.mark.parametrize("params, n_train, expected", [
    ({}, 319, True), ({}, 320, False), ({"batch_size": 8}, 80, False),
    ({"adaptation": "coral"}, 100, False), ({"head_init": "random"}, 100, False),
    ({"probe_ensemble": True}, 5000, True), ({"probe_ensemble": False}, 20, False),
])
def test_auto_keeps_the_probe_with_few_images_only(params, n_train, expected):
    assert FineTuneClassifier(**params)._uses_probe_ensemble(n_train) is expected


def test_auto_is_off_for_a_distillation_student(digits, pair):
    assert FineTuneClassifier(teacher=pair[0])._uses_probe_ensemble(50) is False


def test_probe_ensemble_true_needs_a_solved_head(digits):
    _, X, y = digits
    for head_init in ("random", "zeros"):
        with pytest.raises(ValueError, match=f"probe_ensemble=True .* head_init='solve'.*got head_init='{head_init}'"):
            _fit(X[:40], y[:40], probe_ensemble=True, head_init=head_init)
    with pytest.raises(ValueError, match="probe_ensemble"):
        _fit(X[:40], y[:40], probe_ensemble="yes")


def test_probe_survives_pickle_save_and_load(digits, pair, tmp_path):
    _, X, _ = digits
    clf, _ = pair
    expected = clf.predict_proba(X[400:430])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X[400:430]), expected)
    clf.save(tmp_path / "clf.sktransfer")
    loaded = load(tmp_path / "clf.sktransfer")
    assert loaded.probe_net_ is not None and not loaded.probe_net_.training
    np.testing.assert_allclose(loaded.predict_proba(X[400:430]), expected, atol=1e-6)


def test_partial_fit_keeps_no_probe_and_soups_average_the_probes(digits, pair):
    _, X, y = digits
    first = FineTuneClassifier(image_size=32, random_state=0).partial_fit(X[:40], y[:40], classes=np.arange(10))
    assert first.probe_net_ is None
    clf, alone = pair
    other = _fit(X[80:160], y[80:160], random_state=1)  # other images: another solved head
    assert not torch.equal(other.probe_net_.head.weight, clf.probe_net_.head.weight)
    soup = fuse([clf, other], weights=[0, 1])  # all weight on one member: its probe exactly
    torch.testing.assert_close(soup.probe_net_.head.weight, other.probe_net_.head.weight, rtol=0, atol=0)
    np.testing.assert_array_equal(soup.predict_proba(X[300:320]), other.predict_proba(X[300:320]))
    halves = fuse([clf, other])
    torch.testing.assert_close(halves.probe_net_.head.weight,
                               (clf.probe_net_.head.weight + other.probe_net_.head.weight) / 2)
    assert fuse([clf, alone]).probe_net_ is None  # a member without a probe: the soup has none


def test_a_teacher_teaches_with_its_fine_tuned_network_alone(digits, pair):
    from sktransfer._distillation import teacher_probabilities

    _, X, _ = digits
    clf, _ = pair
    taught = teacher_probabilities(clf, X[300:340], 40, batch=16)
    np.testing.assert_allclose(taught, _softmax(clf, X[300:340]), atol=1e-6)
    assert np.abs(taught - clf.predict_proba(X[300:340])).max() > 0.05


class _Fixed(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out


def test_probe_average_is_the_log_of_the_mean_probabilities_per_task():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    out = ProbeAverage(_Fixed(a), _Fixed(b), [2, 3])(torch.zeros(4, 1))
    for cols in (slice(0, 2), slice(2, 5)):  # each task's probabilities averaged on their own
        expected = (a[:, cols].softmax(1) + b[:, cols].softmax(1)) / 2
        torch.testing.assert_close(out[:, cols].exp(), expected)


def test_binary_decision_function_agrees_with_the_averaged_probabilities(digits):
    _, X, y = digits
    keep = y[:200] < 2
    clf = _fit(X[:200][keep], y[:200][keep])
    assert clf.probe_net_ is not None
    proba = clf.predict_proba(X[300:400])
    np.testing.assert_allclose(clf.decision_function(X[300:400]), np.log(proba[:, 1]) - np.log(proba[:, 0]),
                               rtol=1e-5, atol=1e-6)


def test_training_more_keeps_the_first_fits_probe_unless_turned_off(digits, pair):
    import copy

    _, X, y = digits
    clf = copy.deepcopy(pair[0])
    probe = {k: v.clone() for k, v in clf.probe_net_.state_dict().items()}
    clf.set_params(warm_start=True).fit(X[:80], y[:80])  # continues from the fitted network
    assert all(torch.equal(v, probe[k]) for k, v in clf.probe_net_.state_dict().items())
    clf.partial_fit(X[:40], y[:40])
    assert clf.probe_net_ is not None
    clf.set_params(probe_ensemble=False).fit(X[:80], y[:80])
    assert clf.probe_net_ is None
    np.testing.assert_allclose(clf.predict_proba(X[300:320]), _softmax(clf, X[300:320]), atol=1e-6)


def test_numpy_true_needs_a_solved_head_too(digits):
    _, X, y = digits
    with pytest.raises(ValueError, match="head_init='solve'"):
        _fit(X[:40], y[:40], probe_ensemble=np.True_, head_init="random")


def test_estimators_from_before_the_probe_ensemble_predict_without_one():
    state = earlier_finetune_state({"missing_label": None, "net_": object()})
    assert state["probe_ensemble"] is False and state["probe_net_"] is None
    assert state["mixup"] == 0.0 and state["mixup_"] == 0.0  # nor mixup: training goes on without it
    assert "probe_net_" not in earlier_finetune_state({"net_": object()})  # a regressor has none
