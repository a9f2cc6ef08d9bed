import pickle

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from sktransfer import (
    FineTuneClassifier,
    PretrainedFeatureExtractor,
    TrainingHistoryDisplay,
    load_backbone,
)

FAST = dict(image_size=32, batch_size=16, min_steps=0, random_state=0)


@pytest.fixture(scope="module")
def data(digits):
    images, table, target = digits
    return table[:96], target[:96]


@pytest.fixture(scope="module")
def pretrained():
    return load_backbone("efficientnet_lite0").model.state_dict()


def backbone_state(clf):
    return clf.net_.backbone.model.state_dict()


def changed(clf, pretrained, names):
    state = backbone_state(clf)
    return {n for n in names if not torch.equal(state[n].cpu(), pretrained[n])}


def test_freeze_depth_keeps_stages_and_batchnorm_frozen(data, pretrained):
    X, y = data
    # the whole backbone, BatchNorm statistics updated where trained (not the few-image defaults)
    clf = FineTuneClassifier(freeze_depth=3, max_epochs=1, layer=None, bn_stats="update", **FAST).fit(X, y)
    stages = clf.net_.backbone.stages
    frozen = [p for _, ps in stages[:3] for p in ps]
    trained = [p for _, ps in stages[3:] for p in ps]
    assert clf.n_frozen_stages_ == 3
    assert not changed(clf, pretrained, frozen)
    assert changed(clf, pretrained, trained) == set(trained)
    # BatchNorm statistics of frozen stages were not updated either
    stats = [k for k in pretrained if k.startswith(("bn1.", "blocks.0.", "blocks.1.")) and "running" in k]
    assert stats and not changed(clf, pretrained, stats)
    moving = [k for k in pretrained if k.startswith("blocks.5.") and "running_mean" in k]
    assert changed(clf, pretrained, moving)


def test_freeze_all_is_a_linear_probe(data, pretrained):
    X, y = data
    clf = FineTuneClassifier(freeze_depth="all", max_epochs=1, layer=None, **FAST).fit(X, y)
    assert not changed(clf, pretrained, list(pretrained))
    assert clf.n_frozen_stages_ == len(clf.net_.backbone.stages) == 8


@pytest.mark.parametrize("depth, match", [
    (9, r"freeze_depth must be an int in \[0, 8\] \(the number of backbone stages frozen from the input; "
        r"this backbone has 8\) or 'all', got 9"),  # known once the backbone is
    (-1, r"'freeze_depth' parameter of FineTuneClassifier must be an int in the range \[0, inf\) or a str among"),
    (2.5, r"'freeze_depth' parameter of FineTuneClassifier must be an int"),
    ("some", r"'freeze_depth' parameter of FineTuneClassifier must be an int"),
])
def test_freeze_depth_out_of_range(data, depth, match):
    X, y = data
    with pytest.raises(ValueError, match=match):
        FineTuneClassifier(freeze_depth=depth, layer=None, **FAST).fit(X, y)


def distance(clf, reference):
    state = backbone_state(clf)
    return sum(float((state[k].float().cpu() - reference[k].float()).pow(2).sum())
               for k, _ in clf.net_.backbone.model.named_parameters())


def test_reg_lambda_pulls_toward_pretrained_weights(data, pretrained):
    X, y = data
    kw = dict(max_epochs=2, lr=3e-3, backbone_lr_scale=1.0, augment=False, **FAST)
    free = FineTuneClassifier(reg_lambda=0.0, **kw).fit(X, y)
    pulled = FineTuneClassifier(reg_lambda=10.0, **kw).fit(X, y)
    assert distance(pulled, pretrained) < 0.5 * distance(free, pretrained)
    assert pulled.history_[0]["penalty"] > 0 and free.history_[0]["penalty"] == 0
    zeros = {k: torch.zeros_like(v) for k, v in pretrained.items()}
    decayed = FineTuneClassifier(reg_lambda=10.0, regularization="l2", **kw).fit(X, y)
    assert distance(decayed, zeros) < distance(free, zeros)


def test_penalty_value_is_lambda_half_squared_distance(pretrained):
    from sktransfer import TransferNet
    from sktransfer.training._freezing import freeze
    from sktransfer.training._penalties import WeightPenalty

    backbone = load_backbone("efficientnet_lite0")
    net = TransferNet(backbone, 1280, 3)
    freeze(net, 6)
    with torch.no_grad():
        for p in net.backbone.model.parameters():
            p.add_(0.01)
    trainable = [p for n, p in net.backbone.model.named_parameters() if p.requires_grad]
    expected = 0.5 * 2.0 * sum(float(p.numel()) * 1e-4 for p in trainable)
    penalty = WeightPenalty(net, 2.0, "l2sp", pretrained)
    assert penalty.value() == pytest.approx(expected, rel=1e-3)
    assert len(penalty.params) == len(trainable) < len(list(net.backbone.model.parameters()))


def test_optimizer_applies_no_decay_to_regularised_backbone(data):
    from sktransfer import TransferNet
    from sktransfer.training._optim import make_optimizer

    net = TransferNet(load_backbone("efficientnet_lite0", weights=None), 1280, 3)
    opt = make_optimizer(net, "adamw", 1e-3, 0.05, backbone_lr_scale=0.1, layer_decay=0.5)
    head, *stages = opt.param_groups
    assert head["weight_decay"] == 0.05 and head["lr"] == 1e-3
    assert all(g["weight_decay"] == 0.0 for g in stages)
    assert stages[-1]["lr"] == pytest.approx(1e-4) and stages[-2]["lr"] == pytest.approx(5e-5)


def test_fusion_alpha(data, pretrained):
    X, y = data
    kw = dict(max_epochs=1, **FAST)
    full = FineTuneClassifier(fusion_alpha=1.0, **kw).fit(X, y)
    none = FineTuneClassifier(fusion_alpha=0.0, **kw).fit(X, y)
    half = FineTuneClassifier(fusion_alpha=0.5, **kw).fit(X, y)
    for name, value in backbone_state(none).items():
        assert torch.equal(value.cpu(), pretrained[name]), name
    for name, value in backbone_state(half).items():
        if value.is_floating_point():
            expected = 0.5 * backbone_state(full)[name] + 0.5 * pretrained[name]
            torch.testing.assert_close(value, expected)
    # the head stays the fine-tuned one
    torch.testing.assert_close(half.net_.head.weight, full.net_.head.weight)


def test_early_stopping_restores_the_best_epoch(data, monkeypatch):
    from sktransfer.training._trainer import Trainer

    X, y = data
    snapshots = []
    original = Trainer.evaluate

    def recording(self, net, *args, **kwargs):
        result = original(self, net, *args, **kwargs)
        snapshots.append(({k: v.clone() for k, v in net.state_dict().items()}, result[0]))
        return result

    monkeypatch.setattr(Trainer, "evaluate", recording)
    # a learning rate that makes training diverge after a good start
    clf = FineTuneClassifier(
        early_stopping=True, validation_fraction=0.25, n_iter_no_change=1, max_epochs=8,
        lr=0.5, backbone_lr_scale=0.2, lr_schedule="constant", **FAST,
    ).fit(X, y)
    losses = [h["valid_loss"] for h in clf.history_]
    assert clf.best_epoch_ == int(np.argmin(losses))
    # training diverges: early stopping ends it n_iter_no_change epochs after the best one
    assert clf.n_epochs_ == len(losses) < 8
    assert clf.n_epochs_ - 1 - clf.best_epoch_ == 1
    best_state = snapshots[clf.best_epoch_][0]
    for k, v in clf.net_.state_dict().items():
        assert torch.equal(v, best_state[k])


def test_string_labels_and_prediction_methods(data):
    X, y = data
    labels = np.array(["even", "odd"])[y % 2]
    clf = FineTuneClassifier(max_epochs=1, **FAST).fit(X, labels)
    np.testing.assert_array_equal(clf.classes_, ["even", "odd"])
    proba = clf.predict_proba(X[:10])
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X[:10])), proba, rtol=1e-6)
    decision = clf.decision_function(X[:10])
    assert decision.shape == (10,)
    np.testing.assert_array_equal(clf.predict(X[:10]), clf.classes_[(decision > 0).astype(int)])
    assert set(clf.predict(X[:10])) <= {"even", "odd"}
    assert 0 <= clf.score(X, labels) <= 1


@pytest.mark.parametrize("hidden", [(), (64,)])
def test_cpu_scores_do_not_depend_on_the_batch(hidden):
    # float32 matrix products pick their CPU kernel by the number of rows: a head run in float32
    # gave a sample other scores (~1e-6) in a batch of 2 than in a batch of 20 on an AVX-512 Xeon
    from sktransfer.training._network import TransferNet

    torch.manual_seed(0)
    net = TransferNet(torch.nn.Identity(), 1280, 10, hidden=hidden).eval()
    features = torch.randn(40, 1280)
    with torch.inference_mode():
        whole = net.classify(features)
        pairs = torch.cat([net.classify(features[i:i + 2]) for i in range(0, 40, 2)])
        fours = torch.cat([net.classify(features[i:i + 4]) for i in range(0, 40, 4)])
    assert whole.dtype == torch.float32
    assert torch.equal(whole, pairs) and torch.equal(whole, fours)
    with torch.no_grad():  # the same scores as the float32 head, to float32 rounding
        net.train()
        np.testing.assert_allclose(net.classify(features).numpy(), whole.numpy(), rtol=1e-5, atol=1e-5)


def test_only_small_plain_heads_at_cpu_inference_run_in_float64(monkeypatch):
    from sktransfer.training import _network
    from sktransfer.training._network import TransferNet

    net = TransferNet(torch.nn.Identity(), 64, 3, dropout=0.5).eval()
    features = torch.randn(8, 64)
    with torch.inference_mode():
        assert net._exact_head(features)
        monkeypatch.setattr(_network, "EXACT_HEAD_MAX_PARAMS", 64 * 3 - 1)
        assert not net._exact_head(features)  # a large head: float32
    monkeypatch.undo()
    assert not net._exact_head(features)  # gradients on: training
    with torch.no_grad():
        net.dropout.train()  # a head in training mode (HeadOnly.train), gradients off: dropout applies
        assert not net._exact_head(features)
        assert not torch.equal(net.classify(features), net.classify(features))
        net.dropout.eval()
        net.head = torch.nn.utils.parametrizations.weight_norm(net.head)  # no plain nn.Linear any more
        assert not net._exact_head(features)
        assert net.classify(features).dtype == torch.float32


def test_class_weight_and_sample_weight(data):
    X, y = data
    kw = dict(max_epochs=2, **FAST)
    base = FineTuneClassifier(**kw).fit(X, y).predict_proba(X)[:, 3].mean()
    no3 = FineTuneClassifier(class_weight={c: (0.0 if c == 3 else 1.0) for c in range(10)}, **kw).fit(X, y)
    assert no3.predict_proba(X)[:, 3].mean() < base
    w = np.where(y == 3, 0.0, 1.0)
    by_weight = FineTuneClassifier(**kw).fit(X, y, sample_weight=w).predict_proba(X)
    np.testing.assert_allclose(by_weight, no3.predict_proba(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="sample_weight"):
        FineTuneClassifier(**kw).fit(X, y, sample_weight=w[:5])


def test_partial_fit_and_warm_start(data):
    X, y = data
    clf = FineTuneClassifier(**FAST)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:48], y[:48], classes=np.arange(10))
    head = clf.net_.head.weight.detach().clone()
    clf.partial_fit(X[48:], y[48:])
    assert len(clf.history_) == clf.n_epochs_ == 2
    assert not torch.equal(head, clf.net_.head.weight)
    warm = FineTuneClassifier(max_epochs=1, warm_start=True, **FAST).fit(X, y)
    net = warm.net_
    head = net.head.weight.detach().clone()
    warm.fit(X, y)
    assert warm.net_ is net and warm.n_epochs_ == 2
    assert not torch.equal(head, warm.net_.head.weight)
    with pytest.raises(ValueError, match="not seen in the first fit"):
        warm.fit(X, y + 100)
    # parameters that shape the network cannot change under a continued fit: a clear error, nothing trained
    weights = {k: v.clone() for k, v in warm.net_.state_dict().items()}
    for name, value in (("image_size", 40), ("freeze_depth", 2), ("head_hidden", 8)):
        before = warm.get_params()[name]
        with pytest.raises(ValueError, match=f"{name} changed since the network was built"):
            warm.set_params(**{name: value}).fit(X, y)
        warm.set_params(**{name: before})
    assert all(torch.equal(v, weights[k]) for k, v in warm.net_.state_dict().items())
    warm.set_params(max_epochs=1).fit(X, y)  # a parameter of training: the network goes on
    assert warm.n_epochs_ == 3
    clf.set_params(pooling="max")
    with pytest.raises(ValueError, match="pooling changed"):
        clf.partial_fit(X[:48], y[:48])


def test_a_fit_that_fails_after_building_its_network_leaves_the_estimator_unfitted(data):
    X, y = data
    clf = FineTuneClassifier(max_epochs=1, warm_start=True, early_stopping=True, validation_fraction=0.97, **FAST)
    with pytest.raises(ValueError):
        clf.fit(X[:40], y[:40])  # too few rows left to train on: raised once the network is built
    assert not hasattr(clf, "net_")
    with pytest.raises(NotFittedError):
        clf.predict(X[:2])
    clf.set_params(early_stopping=False).fit(X, y)  # a fresh fit, not a continuation of a broken one
    assert clf.head_init_ == "solve" and clf.n_epochs_ == 1


def test_a_first_partial_fit_without_some_classes_leaves_them_a_fair_start(data):
    from sktransfer.training._head_init import solve_logistic

    z = torch.randn(30, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2] * 15)
    coef, bias = solve_logistic(z, labels, torch.ones(30), 4)
    present_coef, present_bias = solve_logistic(z, torch.tensor([0, 1] * 15), torch.ones(30), 2)
    torch.testing.assert_close(coef[[0, 2]], present_coef)
    torch.testing.assert_close(bias[[0, 2]], present_bias)
    assert torch.all(coef[[1, 3]] == 0) and torch.all(bias[[1, 3]] == present_bias.min())


def test_augment_is_used_in_training_only(data):
    X, y = data
    calls = []

    def augment(batch):
        calls.append(batch.shape[0])
        return batch.flip(-1)

    clf = FineTuneClassifier(max_epochs=1, augment=augment, **FAST).fit(X, y)
    assert sum(calls) == len(X)
    clf.predict(X)
    assert sum(calls) == len(X)
    with pytest.raises(ValueError, match=r"'augment' parameter of \w+ must be"):
        FineTuneClassifier(augment="lots").fit(X, y)


@pytest.mark.parametrize("augment", ["default", "user"])
def test_augmented_batches_train_in_channels_last(data, augment, monkeypatch):
    """grid_sample (RandomAffine) and a user's callable return NCHW tensors; the network must still
    train on channels_last batches, whose steps measured 1.4-1.8x faster on the CPU."""
    X, y = data
    formats, conv = [], torch.nn.Conv2d.forward

    def recording(self, x):
        if self.training and x.shape[1] == 3:  # the stem's input: the batch as augmented
            formats.append(x.is_contiguous(memory_format=torch.channels_last))
        return conv(self, x)

    def user(batch):  # a user's augmentation, returning torch's default layout
        return batch.flip(-1).contiguous()

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recording)
    FineTuneClassifier(max_epochs=1, augment=user if augment == "user" else augment, **FAST).fit(X, y)
    assert formats and all(formats)


def test_default_augmentation_changes_images_but_keeps_shape():
    from sktransfer import RandomAffine

    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    out = RandomAffine()(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    identity = RandomAffine(scale=(1, 1), ratio=(1, 1), shear_degrees=0, flip=False)(x)
    torch.testing.assert_close(identity, x, atol=1e-5, rtol=1e-5)
    flipped = RandomAffine(scale=(1, 1), ratio=(1, 1), shear_degrees=0, flip=True)(x.repeat(8, 1, 1, 1))
    mirrored = [torch.allclose(f, img.flip(-1), atol=1e-5) for f, img in zip(flipped, x.repeat(8, 1, 1, 1))]
    same = [torch.allclose(f, img, atol=1e-5) for f, img in zip(flipped, x.repeat(8, 1, 1, 1))]
    assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


def test_source_to_target_transfer(data):
    X, y = data
    source = FineTuneClassifier(max_epochs=1, **FAST).fit(X, y % 2)
    exported = source.export_backbone()
    ext = PretrainedFeatureExtractor(backbone=exported, image_size=32).fit(X)
    with torch.inference_mode():
        source.net_.eval()
        x = torch.stack([torch.zeros(3, 32, 32)])
        expected = source.net_.features(x).numpy()
    from sktransfer.backbones._layer_outputs import forward_layers

    with torch.inference_mode():
        got = forward_layers(ext.backbone_, x, ext.layers_, "avg").numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    target = FineTuneClassifier(backbone=source, max_epochs=1, freeze_depth="all", **FAST).fit(X, y)
    for k, v in target.net_.backbone.model.state_dict().items():
        assert torch.equal(v, source.net_.backbone.model.state_dict()[k])


def test_training_from_scratch(data, pretrained):
    X, y = data
    clf = FineTuneClassifier(weights=None, max_epochs=1, **FAST).fit(X, y)
    state = backbone_state(clf)
    assert not torch.allclose(state["conv_stem.weight"], pretrained["conv_stem.weight"])


def test_pickle_round_trip_keeps_predictions_and_drops_training_state(data):
    X, y = data
    clf = FineTuneClassifier(max_epochs=1, reg_lambda=0.1, **FAST).fit(X, y)
    blob = pickle.dumps(clf)
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    assert not hasattr(again, "_pretrained")
    assert clf.probe_net_ is not None  # few images: the probe ensemble keeps a second network
    n_weights = sum(v.numel() for net in (clf.net_, clf.probe_net_) for v in net.state_dict().values()) * 4
    assert len(blob) < 1.3 * n_weights  # each network once, no optimizer state or anchor copy


def test_history_display(data):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    X, y = data
    clf = FineTuneClassifier(max_epochs=2, early_stopping=True, validation_fraction=0.25, **FAST).fit(X, y)
    display = TrainingHistoryDisplay.from_estimator(clf)
    np.testing.assert_allclose(display.ax_[0].lines[0].get_ydata(), [h["train_loss"] for h in clf.history_])
    np.testing.assert_allclose(display.ax_[1].lines[0].get_ydata(), [h["valid_score"] for h in clf.history_])
    assert set(clf.history_[0]) >= {"train_loss", "valid_loss", "valid_score", "lr", "seconds"}


def test_linear_probe_then_fine_tune(data, pretrained, monkeypatch):
    from sktransfer.training._trainer import Trainer

    X, y = data
    seen = []
    original = Trainer._epoch

    def spy(self, net, *args, **kwargs):
        seen.append(sum(p.requires_grad for p in net.backbone.parameters()))
        return original(self, net, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_epoch", spy)
    clf = FineTuneClassifier(linear_probe_epochs=1, max_epochs=1, **FAST).fit(X, y)
    assert [h["phase"] for h in clf.history_] == ["linear_probe", "fine_tune"]
    assert seen[0] == 0 and seen[1] > 0


def test_keyboard_interrupt_keeps_a_usable_estimator(data, monkeypatch):
    from sktransfer.training._trainer import Trainer

    X, y = data
    original = Trainer._epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(Trainer, "_epoch", interrupted)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        clf = FineTuneClassifier(max_epochs=5, **FAST).fit(X, y)
    assert clf.n_epochs_ == 1
    assert clf.predict(X[:5]).shape == (5,)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"reg_lambda": -1.0}, r"'reg_lambda' parameter of \w+ must be"),
        ({"regularization": "l1"}, r"'regularization' parameter of \w+ must be"),
        ({"fusion_alpha": 1.5}, r"'fusion_alpha' parameter of \w+ must be"),
        ({"max_epochs": 0}, r"'max_epochs' parameter of \w+ must be"),
        ({"lr": 0}, r"'lr' parameter of \w+ must be"),
        ({"optimizer": "lion"}, r"'optimizer' parameter of \w+ must be"),
        ({"lr_schedule": "wavy"}, r"'lr_schedule' parameter of \w+ must be"),
        ({"validation_fraction": 1.0}, "'validation_fraction' parameter of FineTuneClassifier must be a float in the range \\(0.0, 1.0\\)"),
        ({"label_smoothing": 1.0}, r"'label_smoothing' parameter of \w+ must be"),
        ({"label_smoothing": True}, r"'label_smoothing' parameter of \w+ must be"),
    ],
)
def test_bad_parameters(data, params, match):
    X, y = data
    with pytest.raises(ValueError, match=match):
        FineTuneClassifier(**params).fit(X, y)


def test_verbose_progress(data, capsys):
    X, y = data
    FineTuneClassifier(max_epochs=1, verbose=1, **FAST).fit(X, y)
    assert "epoch 1" in capsys.readouterr().err


def test_unfitted_estimator_as_backbone_says_how_to_keep_weights(data):
    from sklearn.base import clone

    X, y = data
    source = FineTuneClassifier(max_epochs=1, **FAST).fit(X, y)
    target = clone(FineTuneClassifier(backbone=source, **FAST))  # clone drops the source's weights
    with pytest.raises(ValueError, match="export_backbone"):
        target.fit(X, y)


@pytest.mark.parametrize("freeze_depth", ["all", 3])
def test_frozen_prefix_is_computed_once_and_trains_the_same(data, monkeypatch, freeze_depth):
    """Frozen stages without augmentation run once per fit; training is unchanged."""
    import sktransfer.training._frozen_prefix as mod

    X, y = data
    calls = []
    original = mod.precompute

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(mod, "precompute", spy)
    kw = dict(freeze_depth=freeze_depth, max_epochs=3, **FAST)
    fast = FineTuneClassifier(augment=False, **kw).fit(X, y)
    assert calls == [1]
    # same training as running the frozen stages in every step
    slow = FineTuneClassifier(augment=lambda batch: batch, **kw).fit(X, y)
    assert calls == [1]
    np.testing.assert_allclose(fast.predict_proba(X), slow.predict_proba(X), rtol=1e-4, atol=1e-5)
    assert [h["train_loss"] for h in fast.history_] == pytest.approx([h["train_loss"] for h in slow.history_], rel=1e-4)
    for a, b in zip(backbone_state(fast).values(), backbone_state(slow).values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_frozen_prefix_splits_lite0_at_every_stage_boundary():
    from sktransfer.backbones._chain import module_chain
    from sktransfer.training._freezing import freeze
    from sktransfer.training._frozen_prefix import split_chain
    from sktransfer.training._network import TransferNet

    backbone = load_backbone("efficientnet_lite0")
    probe = torch.randn(2, 3, 32, 32)
    chain = module_chain(backbone, probe)
    assert [name for name, _ in chain][:3] == ["conv_stem", "bn1", "blocks.0.0"]
    net = TransferNet(backbone, 1280, 3)
    splits = [split_chain(chain, freeze(net, k)) for k in range(1, 8)]
    assert splits == sorted(set(splits))  # one boundary per stage, in order
    for k, j in zip(range(1, 8), splits):
        frozen = freeze(net, k)
        prefix = {f"{name}.{p}" for name, m in chain[:j] for p, _ in m.named_parameters()}
        assert prefix == {p for p in frozen if not p.startswith("classifier")}


def test_frozen_prefix_falls_back_when_it_cannot_split(monkeypatch, data):
    """A functional step between children, dropout in the prefix or a memory
    budget too small: the full network runs in every step instead."""
    import sktransfer.training._frozen_prefix as mod
    from sktransfer.backbones._chain import module_chain
    from sktransfer.training._freezing import freeze
    from sktransfer.training._frozen_prefix import split_chain
    from sktransfer.training._network import TransferNet

    class Doubling(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 3)
            self.b = torch.nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.b(2 * self.a(x))

    probe = torch.randn(2, 3, 16, 16)
    assert module_chain(load_backbone(Doubling()), probe) is None

    dropped = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.5), torch.nn.Conv2d(4, 4, 3), torch.nn.Conv2d(4, 4, 3)
    )
    backbone = load_backbone(dropped)
    chain = module_chain(backbone, probe)
    assert [name for name, _ in chain] == ["0", "1", "2", "3"]
    net = TransferNet(backbone, 4, 2)
    assert split_chain(chain, freeze(net, 1)) == 1  # dropout after the boundary: fine
    assert split_chain(chain, freeze(net, 2)) is None  # dropout inside the frozen prefix

    X, y = data
    calls = []
    monkeypatch.setattr(mod, "PREFIX_CACHE_BYTES", 0)
    monkeypatch.setattr(mod, "precompute", lambda *a, **k: calls.append(1))
    kw = dict(freeze_depth=3, max_epochs=1, **FAST)
    clf = FineTuneClassifier(augment=False, **kw).fit(X, y)
    assert calls == []
    per_step = FineTuneClassifier(augment=lambda batch: batch, **kw).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), per_step.predict_proba(X))
