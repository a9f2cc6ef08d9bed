"""save()/load(): safetensors + JSON, no pickle, identical predictions."""

import json
import pickle

import numpy as np
import pytest
import torch

import sktransfer
from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor, RandomAffine


@pytest.fixture(scope="module")
def data(digits):
    _, table, target = digits
    return table[:60], target[:60]


def header(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["sktransfer"])


def test_classifier_round_trip(data, tmp_path):
    X, y = data
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    clf = FineTuneClassifier(image_size=32, max_epochs=2, batch_size=16, random_state=0,
                             augment=RandomAffine(flip=True), early_stopping=True, validation_fraction=0.2)
    clf.fit(X, labels)
    path = tmp_path / "clf.safetensors"
    clf.save(path)
    loaded = FineTuneClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert loaded.classes_.dtype == clf.classes_.dtype and loaded.get_params()["augment"].flip is True
    assert loaded.history_ == clf.history_ and loaded.best_epoch_ == clf.best_epoch_
    assert loaded.n_features_in_ == 64 and loaded.preprocessing_ == clf.preprocessing_
    assert sktransfer.load(path).get_params() .keys() == clf.get_params().keys()
    # the fitted estimator can go on training
    loaded.set_params(warm_start=True, max_epochs=1, min_steps=0).fit(X, labels)
    assert len(loaded.history_) == len(clf.history_) + 1


def test_extractor_round_trip_and_pandas(digits, tmp_path):
    pd = pytest.importorskip("pandas")
    _, table, _ = digits
    X = pd.DataFrame(table[:20], columns=[f"px{i}" for i in range(64)])
    ext = PretrainedFeatureExtractor(image_size=48, layer=["stage4", "embedding"], pooling="gem").fit(X)
    ext.save(tmp_path / "ext.safetensors")
    loaded = sktransfer.load(tmp_path / "ext.safetensors")
    np.testing.assert_array_equal(loaded.transform(X), ext.transform(X))
    np.testing.assert_array_equal(loaded.feature_names_in_, ext.feature_names_in_)
    with pytest.raises(ValueError, match="feature names"):
        loaded.transform(X.rename(columns={"px0": "other"}))


def test_unfitted_estimator_round_trips(tmp_path):
    clf = FineTuneClassifier(freeze_depth=3, reg_lambda=0.1, lr_schedule="linear")
    clf.save(tmp_path / "c.safetensors")
    assert sktransfer.load(tmp_path / "c.safetensors").get_params() == clf.get_params()


def test_file_holds_no_pickle_and_loads_without_unpickling(data, tmp_path, monkeypatch):
    X, y = data
    clf = FineTuneClassifier(image_size=32, max_epochs=1, random_state=0).fit(X, y)
    path = tmp_path / "clf.safetensors"
    clf.save(path)
    doc = header(path)
    assert doc["class"] == "FineTuneClassifier" and doc["format"] == "sktransfer-estimator"
    assert b"\x80\x04" not in path.read_bytes()[:200]  # no pickle protocol header

    def no_pickle(*args, **kwargs):
        raise AssertionError("load() must not unpickle")

    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    np.testing.assert_array_equal(sktransfer.load(path).predict(X), clf.predict(X))


def test_callables_are_named_and_defaulted(data, tmp_path):
    X, y = data
    clf = FineTuneClassifier(image_size=32, max_epochs=1, augment=lambda b: b, random_state=0).fit(X, y)
    with pytest.warns(UserWarning, match="augment=<function"):
        clf.save(tmp_path / "c.safetensors")
    loaded = sktransfer.load(tmp_path / "c.safetensors")
    assert loaded.augment == "default"
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))


def test_transferred_backbone_parameter_round_trips(data, tmp_path):
    X, y = data
    # a round trip, not learning: a few steps are enough
    source = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=4, random_state=0).fit(X, y)
    target = FineTuneClassifier(backbone=source.export_backbone(), image_size=32, max_epochs=1, min_steps=4,
                                random_state=0)
    target.save(tmp_path / "t.safetensors")
    loaded = sktransfer.load(tmp_path / "t.safetensors")
    for a, b in zip(loaded.backbone.state_dict().values(), target.backbone.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(loaded.fit(X, y).predict_proba(X), target.fit(X, y).predict_proba(X))


def test_custom_module_cannot_be_saved_safely(tmp_path, data):
    X, y = data
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    ext = PretrainedFeatureExtractor(backbone=net, image_size=16).fit(X)
    with pytest.raises(ValueError, match="custom nn.Module.*pickle or joblib"):
        ext.save(tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content, match", [
    (b"garbage bytes", "Could not read"),
    (None, "not written by sktransfer"),
])
def test_foreign_files_are_refused(tmp_path, content, match):
    from safetensors.torch import save_file

    path = tmp_path / "f.safetensors"
    if content is None:
        save_file({"w": torch.zeros(2)}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        sktransfer.load(path)
    with pytest.raises(FileNotFoundError, match="No estimator file"):
        sktransfer.load(tmp_path / "missing.safetensors")


def test_load_checks_the_class(tmp_path, digits):
    _, table, _ = digits
    PretrainedFeatureExtractor(image_size=32).fit(table[:4]).save(tmp_path / "e.safetensors")
    with pytest.raises(TypeError, match="holds a PretrainedFeatureExtractor, not a FineTuneClassifier"):
        FineTuneClassifier.load(tmp_path / "e.safetensors")
