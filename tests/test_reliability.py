"""Issue 6: clear errors, odd inputs, untouched caller data, repeatability,
out-of-memory retries and resumable checkpoints."""

import numpy as np
import pytest
import torch
from _interrupt import Killed, kill_at
from _tiny import real_cpu_grad_scalers
from PIL import Image
from sklearn.exceptions import NotFittedError

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor
from sktransfer.data._batches import batch_indices

FAST = dict(image_size=32, batch_size=16, max_epochs=1, min_steps=0, random_state=0)


@pytest.fixture(scope="module")
def data(digits):
    _, table, target = digits
    return table[:48], target[:48]


@pytest.fixture(scope="module")
def fitted(data):
    X, y = data
    return FineTuneClassifier(**FAST).fit(X, y)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.zeros((0, 8, 8)), ValueError, "0 sample"),
        (np.full((4, 8, 8), np.nan), ValueError, "NaN"),
        (np.zeros((4, 2, 8, 8, 3)), ValueError, "3 or 4 dimensions"),
        (np.zeros(4), ValueError, "Expected 2D array"),
        (["/no/such/file.png"] * 4, FileNotFoundError, "/no/such/file.png"),
        ([["a"] * 64] * 4, ValueError, "strings|numeric"),
        ([object()] * 4, TypeError, "file paths, PIL images or arrays"),
    ],
)
def test_classifier_fit_rejects_bad_images(X, error, match):
    with pytest.raises(error, match=match):
        FineTuneClassifier(**FAST).fit(X, [0, 1] * (len(X) // 2))


def test_classifier_predict_errors(fitted, data, tmp_path):
    X, _ = data
    with pytest.raises(NotFittedError):
        FineTuneClassifier().predict(X)
    with pytest.raises(ValueError, match="64 features"):
        fitted.predict(X[:, :60])
    with pytest.raises(ValueError, match="NaN|infinity"):
        fitted.predict(np.where(X == 0, np.inf, X))
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt"):
        fitted.predict([str(bad)])


@pytest.mark.parametrize("y, match", [
    (np.zeros(48), "at least 2 classes"),
    (np.linspace(0, 1, 48), "Unknown label type"),
    (np.arange(40) % 2, "inconsistent numbers of samples"),
])
def test_classifier_rejects_bad_targets(data, y, match):
    X, _ = data
    with pytest.raises(ValueError, match=match):
        FineTuneClassifier(**FAST).fit(X, y)


# ------------------------------------------------------------- odd but valid input
def test_odd_but_valid_inputs(photos):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, size=(6, 20, 20), dtype=np.uint8)
    rgba = rng.integers(0, 255, size=(6, 20, 20, 4), dtype=np.uint8)
    u16 = rng.integers(0, 65535, size=(6, 20, 20, 3), dtype=np.uint16)
    pil = [Image.fromarray(photos["chelsea"][: 30 + 7 * i, : 40 + 5 * i]) for i in range(6)]
    labels = np.array(["cat", "dog"] * 3)
    for X in (grey, rgba, u16, pil):
        clf = FineTuneClassifier(**FAST).fit(X, labels)
        assert set(clf.predict(X)) <= {"cat", "dog"}
        assert clf.predict(X[:1]).shape == (1,)  # a single image
    # uint16 is scaled by 65535: the same picture as uint8 gives the same probabilities
    as8 = (u16 // 257).astype(np.uint8)
    clf = FineTuneClassifier(**FAST).fit(as8, labels)
    np.testing.assert_allclose(clf.predict_proba((as8.astype(np.uint16) * 257)), clf.predict_proba(as8), atol=1e-6)


def test_last_training_batch_of_one_and_rows_with_input_shape(digits):
    _, table, target = digits
    X, y = table[:17], target[:17] % 2  # batch_size 16: a last batch of one sample
    # it joins the batch before (a batch of one cannot be normalised by BatchNorm in training)
    assert [len(b) for b in batch_indices(17, 16)] == [17]
    assert [len(b) for b in batch_indices(33, 16)] == [16, 17]
    assert [len(b) for b in batch_indices(32, 16)] == [16, 16]
    clf = FineTuneClassifier(input_shape=(8, 8), **FAST).fit(X, y)
    assert np.isfinite(clf.history_[0]["train_loss"])
    wide = FineTuneClassifier(input_shape=(4, 16), **FAST).fit(X, y)
    assert wide.predict(X).shape == (17,)


# ------------------------------------------------------------- caller data untouched
def test_caller_data_is_not_modified(digits):
    images, table, target = digits
    X = images[:32].astype(np.float32)
    y = target[:32].astype(str).astype(object)
    w = np.linspace(0.5, 1.5, 32)
    copies = [a.copy() for a in (X, y, w)]
    clf = FineTuneClassifier(**FAST).fit(X, y, sample_weight=w)
    clf.predict_proba(X)
    clf.set_params(warm_start=True).fit(X, y)
    clf.partial_fit(X, y)
    for a, b in zip((X, y, w), copies):
        np.testing.assert_array_equal(a, b)
    t = torch.from_numpy(X.copy())
    before = t.clone()
    PretrainedFeatureExtractor(image_size=32, cache=False).fit(t).transform(t)
    clf.predict(t)
    assert torch.equal(t, before)


# ------------------------------------------------------------- repeatability
def test_same_random_state_same_predictions_on_cpu(data):
    X, y = data
    kw = dict(FAST, max_epochs=2, early_stopping=True, validation_fraction=0.25, dropout=0.3)
    a = FineTuneClassifier(**kw).fit(X, y).predict_proba(X)
    b = FineTuneClassifier(**kw).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = FineTuneClassifier(**dict(kw, random_state=1)).fit(X, y).predict_proba(X)
    assert not np.array_equal(a, c)


# ------------------------------------------------------------- out of memory
def _oom_above(limit, fn, position=0):
    """``fn`` that runs out of memory on batches larger than ``limit`` (batch at ``position``)."""
    def forward(*args, **kwargs):
        if len(args[position]) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return fn(*args, **kwargs)
    return forward


def test_out_of_memory_halves_the_batch_in_transform(digits, monkeypatch, recwarn):
    import sktransfer._extractor as extraction

    _, table, _ = digits
    X = table[:40]
    ext = PretrainedFeatureExtractor(image_size=32, batch_size=16, cache=False, optimize=False).fit(X)
    expected = ext.transform(X)
    monkeypatch.setattr(extraction, "forward_layers", _oom_above(5, extraction.forward_layers, 1))
    with pytest.warns(RuntimeWarning, match="Out of device memory at a batch of 16 images; retrying with batches of 8") as record:
        got = ext.transform(X)
    assert len([w for w in record if "Out of device memory" in str(w.message)]) == 1  # warned once
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(extraction, "forward_layers", _oom_above(0, extraction.forward_layers, 1))
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning):
        ext.transform(X)  # not even one image fits: the error reaches the caller


def test_out_of_memory_halves_the_batch_in_predict(fitted, data):
    X, _ = data
    expected = fitted.predict_proba(X)
    net = fitted.net_
    net.forward = _oom_above(3, type(net).forward.__get__(net))
    try:
        with pytest.warns(RuntimeWarning, match="retrying with batches of 8"):
            got = fitted.predict_proba(X)
    finally:
        del net.forward
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("epoch", [2, 4])
def test_killed_run_resumes_exactly_with_warm_start(data, tmp_path, monkeypatch, epoch):
    X, y = data
    kw = dict(FAST, max_epochs=4, linear_probe_epochs=1, early_stopping=True, validation_fraction=0.25,
              n_iter_no_change=10, reg_lambda=0.01, checkpoint_dir=str(tmp_path))
    reference = FineTuneClassifier(**dict(kw, checkpoint_dir=None)).fit(X, y)
    with monkeypatch.context() as m:
        kill_at(m, epoch)
        with pytest.raises(Killed):
            FineTuneClassifier(**kw).fit(X, y)
    files = list(tmp_path.glob("checkpoint-*.safetensors"))
    assert len(files) == 1
    resumed = FineTuneClassifier(warm_start=True, **kw).fit(X, y)
    assert len(resumed.history_) == 5
    assert [h["phase"] for h in resumed.history_] == [h["phase"] for h in reference.history_]
    assert [h["train_loss"] for h in resumed.history_] == [h["train_loss"] for h in reference.history_]
    assert resumed.best_epoch_ == reference.best_epoch_
    np.testing.assert_array_equal(resumed.predict_proba(X), reference.predict_proba(X))


def test_a_resumed_run_takes_up_the_gradient_scale(data, tmp_path, monkeypatch):
    """fp16 training (V100, T4) scales its loss; the scale, which halves at each overflow and here
    doubles after every good step, is part of the checkpoint. Played on the CPU by a real
    GradScaler: the resumed run equals the uninterrupted one, as without a scaler."""
    # ln(10) = 2.3 (a zero head, 10 classes) times 2**127 overflows float32: the first steps are skipped
    scalers = real_cpu_grad_scalers(monkeypatch, init_scale=2.0 ** 127, growth_interval=1)
    X, y = data
    kw = dict(FAST, max_epochs=4, checkpoint_dir=str(tmp_path))
    reference = FineTuneClassifier(**dict(kw, checkpoint_dir=None)).fit(X, y)
    assert scalers[-1].get_scale() < 2.0 ** 127  # steps were skipped
    with monkeypatch.context() as m:
        kill_at(m, 3)
        with pytest.raises(Killed):
            FineTuneClassifier(**kw).fit(X, y)
    resumed = FineTuneClassifier(warm_start=True, **kw).fit(X, y)
    assert scalers[-1].get_scale() == scalers[0].get_scale()
    assert [h["train_loss"] for h in resumed.history_] == [h["train_loss"] for h in reference.history_]
    np.testing.assert_array_equal(resumed.predict_proba(X), reference.predict_proba(X))


def test_finished_runs_are_not_resumed_and_runs_do_not_mix(data, tmp_path):
    X, y = data
    kw = dict(FAST, max_epochs=2, checkpoint_dir=str(tmp_path))
    first = FineTuneClassifier(**kw).fit(X, y)
    again = FineTuneClassifier(warm_start=True, **kw).fit(X, y)  # finished: trains from the start
    assert len(again.history_) == 2
    np.testing.assert_array_equal(again.predict_proba(X), first.predict_proba(X))
    FineTuneClassifier(**kw).fit(X[:40], y[:40])  # other data, other file
    FineTuneClassifier(**dict(kw, lr=1e-3)).fit(X, y)  # other parameters, other file
    assert len(list(tmp_path.glob("checkpoint-*.safetensors"))) == 3
    # a checkpoint is a safe estimator file too
    import sktransfer

    path = next(iter(sorted(tmp_path.glob("checkpoint-*.safetensors"))))
    assert sktransfer.load(path).predict(X).shape == (48,)
