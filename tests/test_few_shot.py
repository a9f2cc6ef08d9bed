"""The few-label recipe: layer="auto" and backbones cut at a stage, the solved head, min_steps."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import (
    FineTuneClassifier,
    FineTuneRegressor,
    PretrainedFeatureExtractor,
    load,
    load_backbone,
)
from sktransfer.backbones._cut import FINE_TUNE_MIN_SIDE, auto_stage, cut_backbone, stage_map_sides
from sktransfer.training._head_init import solve_logistic, solve_ridge, standardise


@pytest.fixture(scope="module")
def lite0():
    return load_backbone()


@pytest.mark.parametrize("size, stage", [(24, 2), (32, 3), (48, 3), (64, 5), (96, 5), (224, None)])
def test_auto_stage_is_the_deepest_map_of_at_least_4x4(lite0, size, stage):
    sides, final = stage_map_sides(lite0, size)
    assert auto_stage(lite0, size) == stage
    if stage is None:
        assert final >= 4
    else:
        assert sides[stage] >= 4 and all(s < 4 for s in sides[stage + 1:]) and final < 4


@pytest.mark.parametrize("size, stage", [(24, 3), (32, 3), (36, 5), (48, 5), (64, 5), (80, 5), (112, None)])
def test_fine_tuning_cuts_at_the_deepest_map_of_at_least_3x3_above_the_last(lite0, size, stage):
    """The fine-tuning estimators' rule: a 3x3 map will do, but not one of the last map's size (at
    80 px stage 6's map is 3x3, as the last map is: the cut stays after stage 5)."""
    sides, final = stage_map_sides(lite0, size)
    assert auto_stage(lite0, size, min_side=FINE_TUNE_MIN_SIDE) == stage
    if stage is None:
        assert final >= 4
    else:
        assert sides[stage] >= 3 and sides[stage] > final and final < 4
        assert all(s < 3 or s == final for s in sides[stage + 1:])


def test_extractor_default_layer_follows_the_image_size(digits):
    _, X, _ = digits
    small = PretrainedFeatureExtractor(image_size=64, cache=False).fit(X[:4])
    assert small.layers_[0][0] == "stage5" and small.n_features_out_ == 112
    stage5 = PretrainedFeatureExtractor(image_size=64, layer="stage5", cache=False).fit(X[:4])
    np.testing.assert_array_equal(small.transform(X[:6]), stage5.transform(X[:6]))
    native = PretrainedFeatureExtractor(cache=False).fit(X[:2])
    assert native.layers_[0][0] == "embedding" and native.n_features_out_ == 1280


@pytest.mark.parametrize("size, pooling", [(64, "catavgmax"), (64, None), (224, "gem"), (224, None)])
def test_auto_layer_widths_come_from_its_probe_and_match_the_outputs(digits, size, pooling):
    """layer="auto" reads its layer's width from the probe that chose the layer (no second probe)."""
    _, X, _ = digits
    auto = PretrainedFeatureExtractor(image_size=size, pooling=pooling, cache=False).fit(X[:2])
    named = PretrainedFeatureExtractor(image_size=size, pooling=pooling, cache=False,
                                       layer=auto.layers_[0][0]).fit(X[:2])  # the width probe's path
    assert auto.layers_ == named.layers_ and auto.layer_widths_ == named.layer_widths_
    assert auto.transform(X[:3]).shape == (3, auto.n_features_out_)
    channels = {64: 112, 224: 1280}[size]
    expected = {"catavgmax": 2 * channels, "gem": channels, None: channels * {64: 16, 224: 49}[size]}
    assert auto.n_features_out_ == expected[pooling]


def test_cut_backbone_computes_the_stage_output_and_drops_the_rest(lite0):
    full = load_backbone().eval()
    cut = cut_backbone(load_backbone(), 3, 64).eval()
    x = torch.randn(2, 3, 64, 64)
    captured = {}
    target = full.stage_output_modules()[3]
    full.model.get_submodule(target).register_forward_hook(lambda m, i, out: captured.update(x=out))
    with torch.no_grad():
        full.forward_features(x)
        out = cut.forward_features(x)
    torch.testing.assert_close(out, captured["x"], rtol=0, atol=0)
    assert len(cut.stages) == 4 and cut.cut_stage == 3
    kept = set(cut.model.state_dict())
    assert not any(k.startswith(("blocks.3.", "blocks.6.", "conv_head.")) for k in kept)
    # the names of what is kept are unchanged (L2-SP anchors, saved files)
    assert kept <= set(full.model.state_dict())
    n_cut = sum(p.numel() for p in cut.parameters())
    assert n_cut < sum(p.numel() for p in full.parameters()) / 10


def test_solve_logistic_matches_scikit_learn(rng):
    X = rng.normal(size=(120, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    w = rng.uniform(0.5, 2.0, size=120)
    z, mean, scale = standardise(torch.as_tensor(X))
    coef, bias = solve_logistic(z, torch.as_tensor(y), torch.as_tensor(w), 3)
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(z.numpy(), y, sample_weight=w)
    ours = torch.softmax(z @ coef.T + bias, 1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(z.numpy()), atol=2e-4)


def test_standardise_does_not_blow_up_units_that_are_all_but_dead(rng):
    """A feature that barely varies (a unit almost always 0 after its activation) is divided by a
    floor of 0.1 x the features' RMS spread, not by its own spread: otherwise its first real
    activation would reach the head multiplied by ~1e8. Ordinary features are standardised exactly."""
    X = rng.normal(size=(40, 5)) * [1.0, 2.0, 0.5, 1.0, 1.0]
    X[:, 3] = 0.0
    X[7, 3] = 1e-8  # one image activates the unit, barely
    X[:, 4] = 3.0  # constant
    z, mean, scale = standardise(torch.as_tensor(X))
    spread = X.std(0)
    rms = np.sqrt((spread ** 2).mean())
    np.testing.assert_allclose(scale[:3].numpy(), spread[:3], rtol=1e-12)  # as StandardScaler
    np.testing.assert_allclose(scale[3:].numpy(), 0.1 * rms, rtol=1e-12)
    assert np.abs(z[:, 3:].numpy()).max() < 1e-6  # not stretched to unit variance
    np.testing.assert_allclose(z.numpy() * scale.numpy() + mean.numpy(), X, atol=1e-12)


def test_solve_ridge_matches_scikit_learn(rng):
    X = rng.normal(size=(80, 5))
    y = X @ np.arange(1, 6) + rng.normal(size=80)
    w = rng.uniform(0.5, 2.0, size=80)
    z = torch.as_tensor(X)
    coef, bias = solve_ridge(z, torch.as_tensor(y), torch.as_tensor(w))
    ref = Ridge(alpha=1.0).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(coef.numpy(), ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(float(bias), ref.intercept_, rtol=1e-8)


def test_solved_head_is_the_linear_probe_of_the_frozen_features(digits):
    """Untrained (lr ~ 0, frozen backbone), the network is StandardScaler + LogisticRegression(C=1)."""
    _, X_all, y_all = digits
    X, y, Xt, yt = X_all[:90], y_all[:90], X_all[200:260], y_all[200:260]
    clf = FineTuneClassifier(
        image_size=32, freeze_depth="all", lr=1e-12, max_epochs=1, min_steps=0, augment=False,
        random_state=0,
    ).fit(X, y)
    assert clf.layer_ == "stage3"
    probe = make_pipeline(
        PretrainedFeatureExtractor(image_size=32, layer="stage3", cache=False), StandardScaler(),
        LogisticRegression(C=1.0, tol=1e-10, max_iter=10000),
    ).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(Xt), probe.predict_proba(Xt), atol=2e-3)
    random = FineTuneClassifier(
        image_size=32, freeze_depth="all", lr=1e-12, max_epochs=1, min_steps=0, augment=False,
        head_init="random", random_state=0,
    ).fit(X, y)
    assert random.score(Xt, yt) < 0.5 < clf.score(Xt, yt)


def test_hidden_head_solves_its_last_layer_on_the_hidden_activations(digits, tmp_path):
    """head_hidden=(64,): Linear -> ReLU -> Dropout -> Linear; the last layer is the linear probe
    of the (random) hidden layer's activations, and the network saves, loads and pickles."""
    _, X_all, y_all = digits
    X, y, Xt = X_all[:90], y_all[:90], X_all[200:260]
    clf = FineTuneClassifier(
        image_size=32, freeze_depth="all", lr=1e-12, max_epochs=1, min_steps=0, augment=False,
        head_hidden=(64,), random_state=0,
    ).fit(X, y)
    assert clf.net_.hidden_sizes == (64,) and clf.net_.head.in_features == 64
    ext = PretrainedFeatureExtractor(image_size=32, layer="stage3", cache=False).fit(X)
    with torch.no_grad():
        hidden = clf.net_.hidden.eval()
        H, Ht = (hidden(torch.as_tensor(ext.transform(a))).double().numpy() for a in (X, Xt))
    assert (H > 0).mean() > 0.2  # standardised inputs keep the ReLUs alive
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=10000)).fit(H, y)
    np.testing.assert_allclose(clf.predict_proba(Xt), probe.predict_proba(Ht), atol=2e-3)
    clf.save(tmp_path / "hidden.skt")
    np.testing.assert_array_equal(load(tmp_path / "hidden.skt").predict_proba(Xt), clf.predict_proba(Xt))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(Xt), clf.predict_proba(Xt))
    trained = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=4, head_hidden=16, random_state=0)
    before = trained.fit(X, y).net_.hidden[0].weight.detach().clone()
    assert trained.net_.hidden_sizes == (16,)
    trained.set_params(min_steps=8).fit(X, y)
    assert not torch.equal(before, trained.net_.hidden[0].weight)  # the hidden layer trains


@pytest.mark.parametrize("bad", [(0,), (64, -1), ("wide",), (1.5,)])
def test_head_hidden_refuses_what_is_not_positive_widths(digits, bad):
    _, X, y = digits
    with pytest.raises(ValueError, match="head_hidden"):
        FineTuneClassifier(image_size=32, max_epochs=1, head_hidden=bad).fit(X[:20], y[:20])


def test_solved_head_for_regression_is_ridge(digits):
    _, X, y = digits
    target = y[:80].astype(float) * 3 + 1
    reg = FineTuneRegressor(
        image_size=32, freeze_depth="all", lr=1e-12, max_epochs=1, min_steps=0, augment=False, dropout=0.0,
        random_state=0,
    ).fit(X[:80], target)
    ext = PretrainedFeatureExtractor(image_size=32, layer="stage3", cache=False).fit(X[:80])
    F = ext.transform(X[:80]).astype(np.float64)
    Z = (F - F.mean(0)) / np.where(F.std(0) > 1e-12, F.std(0), 1)
    scaled = (target - target.mean()) / target.std()
    ridge = Ridge(alpha=1.0).fit(Z, scaled)
    np.testing.assert_allclose(reg.predict(X[:80]), ridge.predict(Z) * target.std() + target.mean(), atol=2e-3)


def test_min_steps_lengthens_short_epochs(digits):
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, batch_size=16, max_epochs=1, min_steps=9, random_state=0).fit(X[:40], y[:40])
    assert clf.n_epochs_ == 3 and len(clf.history_) == 3  # 3 steps an epoch
    clf.set_params(min_steps=0).fit(X[:40], y[:40])
    assert clf.n_epochs_ == 1


def test_cut_network_saves_pickles_and_exports(tmp_path, digits):
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=0, random_state=0).fit(X[:40], y[:40])
    expected = clf.predict_proba(X[40:60])
    clf.save(tmp_path / "clf.sktransfer")
    np.testing.assert_allclose(load(tmp_path / "clf.sktransfer").predict_proba(X[40:60]), expected, atol=1e-6)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(clf)).predict_proba(X[40:60]), expected, atol=1e-6)
    exported = clf.export_backbone()
    assert exported.cut_stage == 3
    ext = PretrainedFeatureExtractor(backbone=exported, image_size=32, layer=None, cache=False).fit(X[:2])
    assert ext.n_features_out_ == 40


def test_layer_and_freeze_depth_count_the_kept_stages(digits):
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, layer="stage2", freeze_depth=3, max_epochs=1, min_steps=0)
    clf.fit(X[:20], y[:20])
    assert clf.layer_ == "stage2" and clf.n_frozen_stages_ == 3
    with pytest.raises(ValueError, match=r"freeze_depth must be an int in \[0, 3\]"):
        clf.set_params(freeze_depth=4).fit(X[:20], y[:20])
    with pytest.raises(ValueError, match="stage0 ... stage7"):
        clf.set_params(freeze_depth=0, layer="stage9").fit(X[:20], y[:20])
    whole = FineTuneClassifier(image_size=32, layer=None, max_epochs=1, min_steps=0).fit(X[:20], y[:20])
    assert whole.layer_ == "embedding" and len(whole.net_.backbone.stages) == 8


@pytest.mark.parametrize("params, match", [
    (dict(min_steps=-1), r"'min_steps' parameter of \w+ must be"),
    (dict(min_steps=2.5), r"'min_steps' parameter of \w+ must be"),
    (dict(head_init="ones"), r"'head_init' parameter of \w+ must be"),
    (dict(layer="blocks.2"), "'layer' parameter of FineTuneClassifier must be"),
    (dict(layer=["stage2"]), "'layer' parameter of FineTuneClassifier must be"),
    (dict(backbone_lr_scale="fast"), r"'backbone_lr_scale' parameter of \w+ must be"),
    (dict(bn_stats="batch"), r"'bn_stats' parameter of \w+ must be"),
])
def test_new_parameters_are_checked_at_fit(params, match, digits):
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, **params)
    with pytest.raises(ValueError, match=match):
        clf.fit(X[:10], y[:10])


def test_design_card_grid_search_learns_at_a_cheap_setting(digits):
    """Issue 14: 32 px, 2 epochs, 300 digits, 3 folds: the best candidate scores >= 0.7."""
    from sklearn.model_selection import GridSearchCV

    _, X, y = digits
    search = GridSearchCV(
        FineTuneClassifier(image_size=32, max_epochs=2, random_state=0),
        {"freeze_depth": [0, 2, "all"], "reg_lambda": [0.0, 0.1]}, cv=3,
    ).fit(X[:300], y[:300])
    assert search.best_score_ >= 0.7
    assert search.cv_results_["mean_test_score"].min() >= 0.5  # no candidate is left at chance
    assert len(search.cv_results_["params"]) == 6
    best = search.best_estimator_  # refitted with the best freeze depth
    depth = search.best_params_["freeze_depth"]
    assert best.n_frozen_stages_ == (len(best.net_.backbone.stages) if depth == "all" else depth)


def test_default_extractor_pipeline_on_small_digits(digits):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    _, X, y = digits
    model = make_pipeline(PretrainedFeatureExtractor(image_size=64), LogisticRegression(max_iter=1000))
    assert cross_val_score(model, X[:300], y[:300], cv=3).mean() >= 0.8


def test_estimators_from_before_the_new_parameters_keep_their_behaviour(digits):
    """A pickle (or saved file) written before layer/head_init/min_steps/bn_stats existed."""
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, layer=None, head_init="random", min_steps=0, bn_stats="update",
                             max_epochs=1, random_state=0).fit(X[:20], y[:20])
    state = clf.__getstate__()
    state["backbone_lr_scale"] = 1.0  # the default then
    for name in ("layer", "head_init", "min_steps", "bn_stats", "layer_", "bn_stats_", "head_init_",
                 "backbone_lr_scale_"):
        del state[name]
    old = FineTuneClassifier.__new__(FineTuneClassifier)
    old.__setstate__(state)
    params = old.get_params()
    assert (params["layer"], params["head_init"], params["min_steps"], params["bn_stats"]) == \
        (None, "random", 0, "update")
    assert old.layer_ == "embedding" and old.bn_stats_ == "update" and old.backbone_lr_scale_ == 1.0
    assert old.head_init_ == "random"
    np.testing.assert_array_equal(old.predict_proba(X[20:30]), clf.predict_proba(X[20:30]))
    old.partial_fit(X[:20], y[:20])  # continues as it was trained
    assert len(old.history_) == 2


def test_bn_stats_pretrained_keeps_the_running_statistics_while_weights_train(digits):
    _, X, y = digits
    pretrained = cut_backbone(load_backbone(), 3, 32).model.state_dict()
    clf = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=4, batch_size=16, random_state=0)
    clf.fit(X[:40], y[:40])
    assert clf.bn_stats_ == "pretrained"  # 3 batches < 10
    state = clf.net_.backbone.model.state_dict()
    stats = [k for k in pretrained if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in pretrained if k.endswith("conv_pw.weight")]
    assert stats and weights
    assert all(torch.equal(state[k], pretrained[k]) for k in stats)
    assert not any(torch.equal(state[k], pretrained[k]) for k in weights)
    update = clf.set_params(bn_stats="update").fit(X[:40], y[:40]).net_.backbone.model.state_dict()
    assert not any(torch.equal(update[k], pretrained[k]) for k in stats if k.startswith("blocks.2."))


@pytest.mark.parametrize("size, layer, expected", [
    (64, "auto", ("stage5", 0.3, 0.2)), (40, "auto", ("stage5", 0.3, 0.2)), (32, "auto", ("stage3", 1.0, 0.0)),
    (24, "auto", ("stage3", 1.0, 0.0)), (48, "stage3", ("stage3", 1.0, 0.0)), (32, "stage5", ("stage5", 0.3, 0.2)),
    (32, None, ("embedding", 0.3, 0.2)),
])
def test_backbone_rate_and_mixup_auto_follow_the_cut_with_few_images(digits, size, layer, expected):
    """A network that ends at stride 8 or less (Lite0's stage 3) learns at the full rate and without
    mixup; one that goes deeper keeps the backbone at 0.3 and mixes, whatever the image size."""
    _, X, y = digits
    clf = FineTuneClassifier(image_size=size, layer=layer, max_epochs=1, min_steps=0, random_state=0)
    clf.fit(X[:30], y[:30])
    assert (clf.layer_, clf.backbone_lr_scale_, clf.mixup_) == expected
    # with 10 batches or more the backbone learns at the head's rate and nothing is mixed
    clf.set_params(batch_size=3).fit(X[:30], y[:30])
    assert (clf.backbone_lr_scale_, clf.mixup_) == (1.0, 0.0)
    assert clf.set_params(backbone_lr_scale=0.5).fit(X[:30], y[:30]).backbone_lr_scale_ == 0.5


def test_a_model_fitted_before_the_cut_decided_the_rate_keeps_the_image_size_rule(digits):
    """At 56 px (a quarter of Lite0's 224) the cut is after stage 5, a deep one: 0.3 and mixup. A
    pickle keeps where its network ends; one pickled before that was kept goes on training
    by the rule it was fitted with, on its image size: the full rate, no mixup."""
    _, X, y = digits
    clf = FineTuneClassifier(image_size=56, max_epochs=1, min_steps=0, random_state=0).fit(X[:30], y[:30])
    assert (clf.layer_, clf.backbone_lr_scale_, clf.mixup_) == ("stage5", 0.3, 0.2)
    again = pickle.loads(pickle.dumps(clf)).set_params(warm_start=True).fit(X[:30], y[:30])
    assert (again.backbone_lr_scale_, again.mixup_) == (0.3, 0.2)
    del clf._feature_side
    clf.set_params(warm_start=True).fit(X[:30], y[:30])
    assert (clf.n_epochs_, clf.backbone_lr_scale_, clf.mixup_) == (2, 1.0, 0.0)


def test_a_backbone_fine_tuned_after_stage_5_is_not_cut_again(digits):
    """At 48 px fine-tuning ends after stage 5 on a 3x3 map. Handed on (``export_backbone``), its
    fine-tuned stages are what it transfers: ``layer="auto"`` keeps them all, for a new
    fine-tuning and for the extractor, while at 32 px (a 2x2 map) both cut it back to stage 3."""
    _, X, y = digits
    source = FineTuneClassifier(image_size=48, max_epochs=1, min_steps=0, random_state=0).fit(X[:20], y[:20])
    exported = source.export_backbone()
    # a cut backbone runs its body's blocks, not their containers: its stage maps are read on those
    assert exported.cut_stage == 5 and stage_map_sides(exported, 32) == ([16, 16, 8, 4, 2, 2], 2)
    target = FineTuneClassifier(backbone=exported, image_size=48, max_epochs=1, min_steps=0, random_state=0)
    assert target.fit(X[20:40], y[20:40]).layer_ == "embedding" and len(target.net_.backbone.stages) == 6
    ext = PretrainedFeatureExtractor(backbone=exported, image_size=48, cache=False).fit(X[:2])
    assert ext.n_features_out_ == 112  # stage 5's channels
    smaller = target.set_params(image_size=32).fit(X[20:40], y[20:40])
    assert smaller.layer_ == "stage3" and len(smaller.net_.backbone.stages) == 4
    assert PretrainedFeatureExtractor(backbone=exported, image_size=32, cache=False).fit(X[:2]).n_features_out_ == 40


def test_shallow_network_is_a_map_of_stride_8_or_less():
    from sktransfer.training._freezing import shallow_network

    # Lite0 rounds sizes up: stage 3 (stride 8), stage 2 (stride 4) at 24 px
    assert shallow_network(32, 4) and shallow_network(24, 3) and shallow_network(36, 5) and shallow_network(24, 6)
    # stage 5 (stride 16) at 36-64 px, the whole network (stride 32) at 32 and 224 px
    assert not any(shallow_network(s, side) for s, side in [(36, 3), (40, 3), (48, 3), (64, 4), (32, 1), (224, 7)])
    # a network that rounds down (ConvNeXt): stride 8 at 36 px is 4x4, stride 16 is 2x2
    assert shallow_network(36, 4) and not shallow_network(36, 2)
    # not a map (a transformer's tokens): small images are at a quarter of the native size or less
    assert shallow_network(56, None, 224) and not shallow_network(60, None, 224)
    assert not shallow_network(32, None, None)


@pytest.mark.parametrize("estimator, n, params, expected", [
    (FineTuneClassifier, 60, {}, "solve"),  # 8 batches: pretrained statistics
    (FineTuneClassifier, 90, {}, "zeros"),  # 12 batches: batch statistics
    (FineTuneRegressor, 90, {}, "zeros"),
    (FineTuneRegressor, 60, {}, "solve"),
    (FineTuneClassifier, 90, {"bn_stats": "pretrained"}, "solve"),
    (FineTuneClassifier, 90, {"freeze_depth": "all"}, "solve"),
    (FineTuneClassifier, 90, {"probe_ensemble": True}, "solve"),
    (FineTuneClassifier, 90, {"head_init": "solve"}, "solve"),
    (FineTuneClassifier, 60, {"head_init": "zeros"}, "zeros"),
    (FineTuneClassifier, 60, {"head_init": "random"}, "random"),
])
def test_head_init_auto_solves_the_head_only_for_features_training_keeps(
        digits, monkeypatch, estimator, n, params, expected):
    """A head solved on features under the pretrained BatchNorm statistics is no start for training
    that normalises with batch statistics: "auto" solves it only where training keeps those features,
    and otherwise starts from a zero head."""
    import sktransfer.training._head_init as head_init

    starts = []  # (how, the head's weight right after)
    for name in ("solve_head", "zero_head"):
        real = getattr(head_init, name)

        def recorded(*args, real=real, name=name):
            real(*args)
            head = args[0].head if name == "solve_head" else args[0]
            starts.append((name, head.weight.detach().cpu().clone()))

        monkeypatch.setattr(head_init, name, recorded)
    _, X, y = digits
    model = estimator(image_size=32, batch_size=8, max_epochs=1, min_steps=0, random_state=0, **params)
    model.fit(X[:n], y[:n])
    assert model.head_init_ == expected
    assert [how for how, _ in starts] == {"solve": ["solve_head"], "zeros": ["zero_head"], "random": []}[expected]
    if expected == "zeros":
        assert not starts[0][1].any() and model.net_.head.weight.abs().max() > 0  # started at zero, then trained
    if expected == "solve":
        assert starts[0][1].abs().max() > 0
    if params.get("probe_ensemble"):
        assert model.bn_stats_ == "update"
        torch.testing.assert_close(model.probe_net_.head.weight, starts[0][1], rtol=0, atol=0)


def test_head_init_is_that_of_the_fit_that_started_the_head(digits):
    """Training that goes on (warm_start) does not restart the head, so head_init_ stays."""
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, batch_size=8, max_epochs=1, min_steps=0, random_state=0)
    assert clf.fit(X[:60], y[:60]).head_init_ == "solve"
    clf.set_params(warm_start=True).fit(X[:90], y[:90])  # 12 batches: a fresh fit would start from zero
    assert clf.bn_stats_ == "update" and clf.head_init_ == "solve"
    assert clf.set_params(warm_start=False).fit(X[:90], y[:90]).head_init_ == "zeros"


def test_frozen_backbone_with_batch_statistics_keeps_the_probe(digits):
    """With every stage frozen the solved head sees the features it was solved on, so "auto" keeps the
    probe ensemble with few images even when bn_stats="update"."""
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, freeze_depth="all", bn_stats="update", max_epochs=1, min_steps=0,
                             random_state=0).fit(X[:40], y[:40])
    assert clf.head_init_ == "solve" and clf.probe_net_ is not None
    clf.set_params(freeze_depth=0).fit(X[:40], y[:40])
    assert clf.head_init_ == "zeros" and clf.probe_net_ is None


def test_estimators_from_before_head_init_auto_keep_their_start(digits):
    """A 0.2 pickle or file has head_init ("solve" then the default) but no head_init_."""
    _, X, y = digits
    clf = FineTuneClassifier(image_size=32, head_init="solve", max_epochs=1, random_state=0).fit(X[:20], y[:20])
    state = clf.__getstate__()
    del state["head_init_"]
    old = FineTuneClassifier.__new__(FineTuneClassifier)
    old.__setstate__(state)
    assert old.head_init_ == "solve" and old.get_params()["head_init"] == "solve"
    assert pickle.loads(pickle.dumps(clf)).head_init_ == "solve"


@pytest.mark.parametrize("n, batch_size, expected", [(319, 32, "pretrained"), (320, 32, "update"),
                                                      (90, 8, "update")])
def test_bn_stats_auto_depends_on_the_number_of_batches(n, batch_size, expected):
    from sktransfer.training._freezing import (
        resolve_backbone_lr_scale,
        resolve_bn_stats,
    )

    assert resolve_bn_stats("auto", n, batch_size) == expected
    assert resolve_bn_stats("update", 5, 32) == "update"
    assert resolve_backbone_lr_scale("auto", n, batch_size) == (0.3 if expected == "pretrained" else 1.0)
    # a shallow network (a map of stride 8 or less) learns at the full rate with few images too
    assert resolve_backbone_lr_scale("auto", n, batch_size, shallow=True) == 1.0
    assert resolve_backbone_lr_scale(0.5, 5, 32) == 0.5
    assert resolve_backbone_lr_scale(0.5, 5, 32, shallow=True) == 0.5
