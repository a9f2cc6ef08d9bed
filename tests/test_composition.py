"""Inside scikit-learn: clone, Pipelines, searches, cross-validation, routing, persistence."""

import pickle

import joblib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    RandomizedSearchCV,
    cross_val_score,
    cross_validate,
)
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor

FAST = dict(image_size=32, batch_size=16, min_steps=0, random_state=0)


@pytest.fixture(scope="module")
def small(digits):
    images, table, y = digits
    return table[:80], y[:80]


def test_clone_and_nested_params(small):
    pipe = make_pipeline(StandardScaler(), FineTuneClassifier(freeze_depth=2, **FAST))
    params = pipe.get_params()
    assert params["finetuneclassifier__freeze_depth"] == 2
    pipe.set_params(finetuneclassifier__freeze_depth="all", finetuneclassifier__reg_lambda=0.5)
    cloned = clone(pipe)
    assert cloned.get_params()["finetuneclassifier__freeze_depth"] == "all"
    assert cloned.get_params()["finetuneclassifier__reg_lambda"] == 0.5
    assert cloned.steps[1][1] is not pipe.steps[1][1]


def test_randomized_search_and_cross_validation(small):
    X, y = small
    search = RandomizedSearchCV(
        FineTuneClassifier(max_epochs=1, **FAST),
        {"reg_lambda": [0.0, 0.01, 0.1], "fusion_alpha": [0.5, 1.0]},
        n_iter=2, cv=2, random_state=0,
    ).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    pipe = make_pipeline(PretrainedFeatureExtractor(image_size=32, layer="stage4"), StandardScaler(),
                         LogisticRegression(max_iter=1000))
    scores = cross_val_score(pipe, X, y, cv=2)
    assert scores.shape == (2,) and scores.mean() > 0.3  # chance is 0.1
    results = cross_validate(FineTuneClassifier(max_epochs=1, **FAST), X, y, cv=2,
                             scoring=["accuracy", "balanced_accuracy", "neg_log_loss"])
    assert {"test_accuracy", "test_balanced_accuracy", "test_neg_log_loss"} <= set(results)
    assert np.all(results["test_neg_log_loss"] < 0)


def _torch_threads(_):
    import torch

    return torch.get_num_threads()


def _threads_after_sktransfer(estimator, X, y):
    """A "score": torch's thread count in the worker, once sktransfer has fitted and predicted there."""
    estimator.predict(X[:2])
    return torch.get_num_threads()


def test_process_workers_do_not_oversubscribe(small):
    """In cross-validation with n_jobs=2, each worker process runs sktransfer with its
    share of the cores, not all of them (2 processes x all cores would oversubscribe)."""
    X, y = small
    threads = cross_val_score(FineTuneClassifier(max_epochs=1, **FAST), X, y, cv=2, n_jobs=2,
                              scoring=_threads_after_sktransfer)
    assert len(threads) == 2
    assert max(threads) <= max(1, joblib.cpu_count() // 2)


@pytest.mark.parametrize(
    "tail",
    [
        [StandardScaler(), LogisticRegression(max_iter=1000)],
        [PCA(n_components=10), SVC()],
        [HistGradientBoostingClassifier(max_iter=20)],
    ],
    ids=["scaler-logreg", "pca-svc", "hgb"],
)
def test_extractor_pipelines(small, tail):
    X, y = small
    pipe = make_pipeline(PretrainedFeatureExtractor(image_size=32, layer="stage4"), *tail).fit(X[:60], y[:60])
    assert pipe.predict(X[60:]).shape == (20,)


def test_feature_union_of_layers_and_backbones(small):
    X, y = small
    union = FeatureUnion([
        ("mid", PretrainedFeatureExtractor(image_size=32, layer="stage4")),
        ("top", PretrainedFeatureExtractor(image_size=32, layer=None)),
        ("scratch", PretrainedFeatureExtractor("resnet18", weights=None, image_size=32, layer=None)),
    ])
    Z = union.fit_transform(X)
    assert Z.shape == (len(X), 80 + 1280 + 512)
    names = union.get_feature_names_out()
    assert names[0] == "mid__stage4_0" and names[80] == "top__embedding_0" and names[-1] == "scratch__embedding_511"
    np.testing.assert_allclose(Z[:, :80], PretrainedFeatureExtractor(image_size=32, layer="stage4").fit_transform(X),
                               rtol=1e-5)


def test_column_transformer_with_image_paths(small, tmp_path):
    pd = pytest.importorskip("pandas")
    from PIL import Image

    X, y = small
    paths = []
    for i, row in enumerate(X[:40]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray((row.reshape(8, 8) * 15).astype(np.uint8)).save(paths[-1])
    frame = pd.DataFrame({"image": paths, "size": np.arange(40.0), "brightness": X[:40].mean(1)})
    ct = ColumnTransformer([
        ("img", PretrainedFeatureExtractor(image_size=32, layer="stage3"), ["image"]),
        ("num", StandardScaler(), ["size", "brightness"]),
    ])
    model = make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(frame, y[:40])
    Z = ct.transform(frame)
    assert Z.shape == (40, 40 + 2)
    assert model.predict(frame).shape == (40,)
    np.testing.assert_allclose(
        Z[:, :40], PretrainedFeatureExtractor(image_size=32, layer="stage3").fit(paths).transform(paths), rtol=1e-5
    )


def test_metadata_routing_of_sample_weight(small):
    X, y = small
    w = np.where(y == 3, 0.0, 1.0)
    direct = FineTuneClassifier(max_epochs=1, **FAST).fit(X, y, sample_weight=w)
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(
            FunctionTransformer(),
            FineTuneClassifier(max_epochs=1, **FAST).set_fit_request(sample_weight=True),
        ).fit(X, y, sample_weight=w)
        np.testing.assert_allclose(pipe.predict_proba(X), direct.predict_proba(X), rtol=1e-5, atol=1e-6)
        search = GridSearchCV(
            FineTuneClassifier(max_epochs=1, **FAST).set_fit_request(sample_weight=True)
            .set_score_request(sample_weight=False),
            {"reg_lambda": [0.0]}, cv=2,
        ).fit(X, y, sample_weight=w)
        np.testing.assert_allclose(search.best_estimator_.predict_proba(X), direct.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_persistence_round_trips(small, tmp_path):
    X, y = small
    clf = FineTuneClassifier(max_epochs=1, **FAST).fit(X, y)
    expected = clf.predict_proba(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), expected)
    joblib.dump(clf, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict_proba(X), expected)


def test_model_on_another_device_pickles_to_cpu(small, monkeypatch):
    """What a GPU-fitted model does at pickling time, checked without a GPU."""
    import sktransfer._device as dev

    X, y = small
    clf = FineTuneClassifier(max_epochs=1, **FAST).fit(X, y)
    moved = []
    original = dev.cpu_copy

    def tracking(module):
        moved.append(module)
        return original(module)

    monkeypatch.setattr(dev, "module_device", lambda module: torch.device("cuda", 0))
    monkeypatch.setattr(dev, "cpu_copy", tracking)
    state = clf.__getstate__()
    assert clf.probe_net_ is not None  # few images: the probe ensemble's second network moves too
    assert moved == [clf.net_, clf.probe_net_]
    assert state["net_"] is not clf.net_ and state["probe_net_"] is not clf.probe_net_
    assert all(t.device.type == "cpu" for name in ("net_", "probe_net_") for t in state[name].state_dict().values())
    monkeypatch.undo()
    again = pickle.loads(pickle.dumps(clf))
    again.device = "auto"
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))


def test_cpu_copy_does_not_touch_the_original():
    from sktransfer._device import cpu_copy

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    copy = cpu_copy(net)
    assert copy is not net and copy[0].weight is not net[0].weight
    torch.testing.assert_close(copy[0].weight, net[0].weight)
    assert copy[0].weight.requires_grad


@pytest.mark.parametrize("old_fused, new_fused, momentum", [(True, False, None), (False, True, None),
                                                            (False, False, 0.9)])
def test_kept_optimizer_state_is_carried_to_a_new_optimizer(old_fused, new_fused, momentum):
    """What ``partial_fit`` does after a change of ``device`` (run for real in tests/test_cuda.py):
    a meta tensor stands in for state left on another device; the new optimizer, built for the
    parameters' device, takes the old one's state and keeps its own settings."""
    from sktransfer._device import carry_state, state_elsewhere

    def make(fused):
        if momentum:
            return torch.optim.SGD(net.parameters(), lr=0.1, momentum=momentum)
        return torch.optim.AdamW(net.parameters(), lr=0.1, fused=fused)

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    old = make(old_fused)
    for _ in range(2):
        old.zero_grad()
        net(torch.randn(5, 3)).sum().backward()
        old.step()
    assert not state_elsewhere(old)
    new = carry_state(old, make(new_fused))
    assert bool(new.param_groups[0].get("fused")) == (new_fused and not momentum)
    for param in net.parameters():
        assert set(new.state[param]) == set(old.state[param])
        for key, value in old.state[param].items():
            torch.testing.assert_close(new.state[param][key], value, rtol=0, atol=0)
    new.zero_grad()
    net(torch.randn(5, 3)).sum().backward()
    new.step()  # it steps from the carried state
    moved = "momentum_buffer" if momentum else "exp_avg"
    new.state[net[0].weight][moved] = torch.empty(4, 3, device="meta")
    assert state_elsewhere(new)


@pytest.mark.parametrize("capability, dtype", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                               ((7, 5), torch.float16), ((7, 0), torch.float16), ((6, 1), None)])
def test_autocast_is_bf16_from_ampere_and_fp16_with_a_scaler_before(monkeypatch, capability, dtype):
    """T4 and V100 (7.x) report bf16 supported by emulation, but cuDNN has no bf16 convolutions
    there: they autocast to fp16, and training scales its gradients. Older GPUs, whose fp16 is
    slower than their float32, run float32."""
    import warnings

    from sktransfer._device import amp_dtype, autocast, grad_scaler

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert amp_dtype(cuda) == dtype and amp_dtype(cpu) is None
    assert grad_scaler(cpu) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available, disabling ...": no GPU here
        assert getattr(autocast(cuda), "fast_dtype", None) == dtype
        scaler = grad_scaler(cuda)
    assert (scaler is not None) == (dtype == torch.float16)
    monkeypatch.setattr(torch.version, "hip", "6.2")  # ROCm: bf16 whatever the architecture number
    assert amp_dtype(cuda) == torch.bfloat16


def test_html_repr_links_to_our_docs():
    html = FineTuneClassifier()._repr_html_()
    assert "FineTuneClassifier" in html
    assert "sktransfer.readthedocs.io" in html
    assert "sktransfer.readthedocs.io" in PretrainedFeatureExtractor()._repr_html_()
