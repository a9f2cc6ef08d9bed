"""sktransfer.fuse and greedy_soup: weight-space means of fitted estimators."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from sktransfer import FineTuneClassifier, FineTuneRegressor, fuse, greedy_soup, load


def _run(X, y, seed, **kw):
    params = dict(image_size=32, max_epochs=1, min_steps=8, random_state=seed)
    return FineTuneClassifier(**{**params, **kw}).fit(X, y)


@pytest.fixture(scope="module")
def runs(digits):
    """Two runs from the same pretrained weights (other seeds), a third trained on shuffled labels."""
    _, X, y = digits
    shuffled = np.random.default_rng(0).permutation(y[:120])
    return _run(X[:120], y[:120], 0), _run(X[:120], y[:120], 1), _run(X[:120], shuffled, 2, head_init="random")


def test_fuse_of_one_estimator_is_an_equal_copy(digits, runs):
    _, X, _ = digits
    a = runs[0]
    before = {k: v.clone() for k, v in a.net_.state_dict().items()}
    soup = fuse([a])
    assert soup is not a and soup.net_ is not a.net_ and isinstance(soup, FineTuneClassifier)
    np.testing.assert_array_equal(soup.predict_proba(X[200:260]), a.predict_proba(X[200:260]))
    np.testing.assert_array_equal(soup.classes_, a.classes_)
    assert soup.get_params() == a.get_params() and soup.soup_weights_.tolist() == [1.0]
    for key, value in a.net_.state_dict().items():  # the member is untouched
        assert torch.equal(value, before[key])


def test_fuse_averages_every_tensor_with_the_weights(digits, runs):
    _, X, _ = digits
    a, b, _ = runs
    soup = fuse([a, b], weights=[3, 1])
    np.testing.assert_allclose(soup.soup_weights_, [0.75, 0.25])
    sa, sb, ss = a.net_.state_dict(), b.net_.state_dict(), soup.net_.state_dict()
    for key in ("head.weight", "backbone.model.conv_stem.weight", "backbone.model.bn1.running_var"):
        torch.testing.assert_close(ss[key], 0.75 * sa[key] + 0.25 * sb[key], rtol=1e-5, atol=1e-7)
    counter = "backbone.model.bn1.num_batches_tracked"
    assert ss[counter].dtype == torch.int64
    assert int(ss[counter]) == round(0.75 * int(sa[counter]) + 0.25 * int(sb[counter]))
    # weight 1 on one member: its network exactly
    np.testing.assert_array_equal(fuse([a, b], weights=[0, 1]).predict_proba(X[200:230]),
                                  b.predict_proba(X[200:230]))


def test_fuse_of_two_equal_estimators_predicts_the_same(digits, runs):
    _, X, y = digits
    twin = _run(X[:120], y[:120], 0)
    soup = fuse([runs[0], twin])
    np.testing.assert_allclose(soup.predict_proba(X[200:260]), runs[0].predict_proba(X[200:260]),
                               rtol=1e-5, atol=1e-6)


def test_fuse_refuses_what_cannot_be_averaged(digits, runs):
    _, X, y = digits
    a = runs[0]
    with pytest.raises(ValueError, match="classes_"):
        fuse([a, _run(X[:60][y[:60] < 5], y[:60][y[:60] < 5], 0)])
    with pytest.raises(ValueError, match="preprocessing_"):
        fuse([a, _run(X[:60], y[:60], 0, image_size=48)])
    with pytest.raises(ValueError, match="architecture"):
        fuse([a, _run(X[:60], y[:60], 0, head_hidden=8)])
    regressor = FineTuneRegressor(image_size=32, max_epochs=1, min_steps=4, random_state=0).fit(X[:40], y[:40])
    with pytest.raises(TypeError, match="one class"):
        fuse([a, regressor])
    with pytest.raises(NotFittedError):
        fuse([a, FineTuneClassifier()])
    with pytest.raises(TypeError, match="list of fitted"):
        fuse(a)
    with pytest.raises(ValueError, match="empty"):
        fuse([])
    with pytest.raises(ValueError, match="2 numbers"):
        fuse([a, runs[1]], weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        fuse([a, runs[1]], weights=[1.0, -1.0])


def test_fuse_can_reestimate_batchnorm_statistics_on_images(digits, runs):
    _, X, y = digits
    with pytest.raises(ValueError, match="bn_stats_='pretrained'"):
        fuse(runs[:2], X=X[300:400])  # their heads learned on the pretrained statistics
    # one pass per image when predicting (no test-time views), so that the hook below sees the images alone
    learned = [_run(X[:120], y[:120], seed, bn_stats="update", test_time_augment=0) for seed in (0, 1)]
    soup = fuse(learned, X=X[300:400])
    # the first BatchNorm sees the stem convolution's output, which no statistic changes: its running
    # mean is now the mean of that output over the images
    seen = []
    bn = soup.net_.backbone.model.bn1
    hook = bn.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].double()))
    soup.predict(X[300:400])
    hook.remove()
    inputs = torch.cat(seen)
    torch.testing.assert_close(bn.running_mean.double(), inputs.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning, match=r"re-estimate them: fuse\(estimators, X=X_train\)"):
        averaged = fuse(learned)  # the averaged statistics, which do not match the averaged weights
    assert not torch.allclose(averaged.net_.backbone.model.bn1.running_mean, bn.running_mean)


def test_greedy_soup_keeps_members_only_while_the_score_holds(digits, runs):
    _, X, y = digits
    X_val, y_val = X[400:600], y[400:600]
    soup = greedy_soup([runs[2], runs[0], runs[1]], X_val, y_val)
    scores = soup.soup_scores_
    assert scores[0] < 0.3 < min(scores[1:])  # the shuffled-label run is poor
    assert soup.soup_weights_[0] == 0.0  # and left out
    assert soup.soup_score_ >= scores.max()
    assert soup.soup_score_ == pytest.approx(soup.score(X_val, y_val))
    kept = soup.soup_weights_ > 0
    np.testing.assert_allclose(soup.soup_weights_[kept], 1.0 / kept.sum())


def test_fused_estimators_save_load_and_pickle(digits, runs, tmp_path):
    _, X, _ = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # members that kept the pretrained statistics: nothing to re-estimate
        soup = fuse(runs[:2])
    expected = soup.predict_proba(X[200:240])
    for restored in (pickle.loads(pickle.dumps(soup)), _saved(soup, tmp_path)):
        np.testing.assert_allclose(restored.predict_proba(X[200:240]), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(restored.soup_weights_, [0.5, 0.5])


def _saved(estimator, tmp_path):
    path = tmp_path / "soup.safetensors"
    estimator.save(path)
    return load(path)


def test_fuse_warns_for_learned_statistics_that_x_cannot_re_estimate(digits):
    _, X, y = digits
    partly_frozen = [_run(X[:120], y[:120], seed, bn_stats="update", freeze_depth=1) for seed in (0, 1)]
    with pytest.warns(UserWarning, match=r"frozen stages .*score the soup on held-out images"):
        fuse(partly_frozen)
    with pytest.raises(ValueError, match="frozen stages"):
        fuse(partly_frozen, X=X[300:400])
