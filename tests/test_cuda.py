"""The CUDA paths: autocast (bf16; fp16 before Ampere), channels_last, device moves, and
GPU-fitted models pickled and loaded on a machine without a GPU.

Skipped where torch sees no GPU (CI has none); run on a GPU machine with
``pytest tests/test_cuda.py`` (docs/reliability.md, "On a GPU").
"""

import collections
import contextlib
import os
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from _interrupt import Killed, kill_at
from _tiny import large_output_linear
from PIL import Image
from sklearn.linear_model import LogisticRegression

from sktransfer import FineTuneClassifier, FineTuneRegressor, PretrainedFeatureExtractor
from sktransfer._device import amp_dtype, grad_scaler

# "cuda": the one module that sees the GPU (tests/conftest.py hides it from the others)
# the condition is read as each test is set up (a string), not as the module is collected
pytestmark = [pytest.mark.cuda, pytest.mark.skipif("not torch.cuda.is_available()", reason="needs a CUDA GPU")]

FAST = dict(image_size=32, batch_size=16, random_state=0)


@pytest.fixture(scope="module")
def split(digits):
    _, table, y = digits
    return table[:300], y[:300], table[1000:1300], y[1000:1300]


@pytest.fixture(scope="module")
def small_photos(photos):
    return np.stack([np.asarray(Image.fromarray(photos[n]).resize((64, 64))) for n in photos])


Call = collections.namedtuple("Call", "channels_last dtype device grad n")


@contextlib.contextmanager
def conv_calls():
    """``(module, Call)`` for every ``Conv2d`` call made while the block runs."""
    calls = []

    def hook(module, args, output):
        if isinstance(module, torch.nn.Conv2d):
            x = args[0]
            calls.append((module, Call(x.is_contiguous(memory_format=torch.channels_last), output.dtype,
                                       output.device.type, torch.is_grad_enabled(), len(x))))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def stem_calls(calls, net):
    """The calls of ``net``'s first convolution: its input is the image batch itself."""
    stem = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    return [call for module, call in calls if module is stem]


def not_autocast_channels_last_on_gpu(calls):
    """The calls that did not run on the GPU, in its autocast dtype (bf16; fp16 before Ampere),
    on a channels_last batch."""
    dtype = amp_dtype(torch.device("cuda")) or torch.float32  # float32 below compute capability 7
    return sorted({call for call in calls if not (call.channels_last and call.dtype == dtype
                                                   and call.device == "cuda")}, key=str)


def devices(module):
    return {t.device.type for t in list(module.parameters()) + list(module.buffers())}


def autocast_close(p, q):
    """Whether one network's class probabilities ``p`` in autocast and ``q`` in float32 agree as its
    rounding allows. bf16 flips near-ties and moves a few probabilities by 0.1-0.2 (measured on the
    H200); the CPU's bf16 autocast on these tests' models: 98-99% agree, mean difference 0.001-0.004,
    largest 0.06-0.15."""
    diff = np.abs(p - q)
    return np.mean(p.argmax(1) == q.argmax(1)) >= 0.95 and diff.mean() < 0.02 and diff.max() < 0.3


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_extractor_runs_autocast_channels_last_and_matches_the_cpu(small_photos):
    cpu = PretrainedFeatureExtractor(image_size=64, device="cpu", cache=False).fit(small_photos)
    with conv_calls() as calls:
        gpu = PretrainedFeatureExtractor(image_size=64, device="cuda", cache=False).fit(small_photos)
        Z = gpu.transform(small_photos)
    assert isinstance(Z, np.ndarray) and Z.dtype == np.float32
    assert devices(gpu.backbone_) == {"cuda"}
    ran = stem_calls(calls, gpu.backbone_)
    assert ran and not_autocast_channels_last_on_gpu(ran) == []
    assert not any(call.grad for call in ran)  # inference mode
    # autocast's rounding only: the same embeddings as the CPU's float32 run
    assert cosines(Z, cpu.transform(small_photos)).min() > 0.99


def test_batches_queued_on_the_gpu_reach_their_own_rows(small_photos):
    # 32 different images in 11 batches of 3: each batch's copy back is asynchronous and handed on
    # once the next one is queued (sktransfer._inference); a row late, early or half copied shows
    images = np.stack([np.rot90(img[:, ::-1] if flip else img, k) for img in small_photos
                       for flip in (False, True) for k in range(4)])
    ext = PretrainedFeatureExtractor(image_size=64, device="cuda", cache=False).fit(images)
    whole = ext.set_params(batch_size=len(images)).transform(images)
    queued = ext.set_params(batch_size=3).transform(images)
    unit = whole / np.linalg.norm(whole, axis=1, keepdims=True)
    assert (unit @ unit.T - 2 * np.eye(len(images))).max() < 0.99  # no two alike (0.974 on the CPU)
    assert cosines(queued, whole).min() > 0.999


def test_files_decoded_by_worker_processes_reach_the_gpu(small_photos, tmp_path):
    files = []
    for i, img in enumerate(small_photos):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(files[-1])
    ext = PretrainedFeatureExtractor(image_size=64, device="cuda", cache=False, batch_size=2)
    in_process = ext.fit(files).transform(files)
    by_workers = ext.set_params(num_workers=2).transform(files)  # pinned memory, copies in the background
    assert cosines(by_workers, in_process).min() > 0.999
    assert cosines(by_workers, ext.transform(small_photos)).min() > 0.999


def test_embedded_weights_classify_on_cuda(photos):
    images = [photos["chelsea"], photos["coffee"]]
    top1 = PretrainedFeatureExtractor(layer="logits", device="cuda").fit(images).transform(images).argmax(1)
    assert 281 <= top1[0] <= 285 and top1[1] == 967


def test_classifier_trains_on_cuda_in_autocast_channels_last(split):
    X, y, X_test, y_test = split
    with conv_calls() as calls:
        clf = FineTuneClassifier(device="cuda", **FAST).fit(X, y)
    assert devices(clf.net_) == {"cuda"}
    ran = stem_calls(calls, clf.net_)
    # the calls before the network moves to the GPU: the shapes worked out on the CPU as it is built
    built = next((i for i, call in enumerate(ran) if call.device == "cuda"), None)
    assert built is not None, ran
    assert all(call.device == "cpu" and not call.grad and call.n <= 2 for call in ran[:built])
    on_gpu = ran[built:]
    assert any(call.grad for call in on_gpu)  # the stem trained (freeze_depth=0)
    assert not_autocast_channels_last_on_gpu(on_gpu) == []
    assert all(np.isfinite(h["train_loss"]) for h in clf.history_)
    proba = clf.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    on_gpu = clf.score(X_test, y_test)
    on_cpu = FineTuneClassifier(device="cpu", **FAST).fit(X, y).score(X_test, y_test)
    assert on_gpu > 0.8 and on_gpu >= on_cpu - 0.05, (on_gpu, on_cpu)


@pytest.mark.parametrize("fraction", [0.1, 0.0], ids=["fits-on-the-gpu", "kept-on-the-cpu"])
def test_training_data_waits_on_the_gpu_when_it_fits(split, monkeypatch, fraction):
    from sktransfer import load_backbone
    from sktransfer.data import _batches
    from sktransfer.data._sources import ArraySource
    from sktransfer.training import _frozen_prefix

    monkeypatch.setattr(_batches, "GPU_RESIDENT_FRACTION", fraction)
    where = "cuda" if fraction else "cpu"
    spec = load_backbone("efficientnet_lite0", weights=None).preprocessing.replace(image_size=32)
    source = ArraySource(torch.rand(40, 3, 48, 48, generator=torch.Generator().manual_seed(0)), (0.0, 1.0))
    reference = _batches.PreparedImages(source, spec, torch.device("cpu"), True)
    data = _batches.PreparedImages(source, spec, torch.device("cuda"), True)
    assert data.cache.device.type == where
    idx = np.array([7, 3, 39, 0, 3])
    x = data.batch(idx)
    assert x.device.type == "cuda" and x.is_contiguous(memory_format=torch.channels_last)
    # resized on the GPU wherever they wait: close to the CPU's values, not bitwise (a wrong row
    # differs by about 1)
    torch.testing.assert_close(x.cpu(), reference.batch(idx), rtol=0, atol=1e-3)
    monkeypatch.setattr(_batches, "GPU_RESIDENT_FRACTION", 0.1 - fraction)  # the other place
    elsewhere = _batches.PreparedImages(source, spec, torch.device("cuda"), True)
    assert elsewhere.cache.device.type != where
    torch.testing.assert_close(elsewhere.batch(idx), x, rtol=0, atol=0)  # the same values either way
    monkeypatch.setattr(_batches, "GPU_RESIDENT_FRACTION", fraction)
    # the frozen prefix's precomputed activations (freeze_depth=2, no augmentation) likewise
    placed = []

    def spy(tensor, device):
        out = _batches.resident(tensor, device)
        placed.append(out.device.type)
        return out

    monkeypatch.setattr(_frozen_prefix, "resident", spy)
    X, y, X_test, y_test = split
    clf = FineTuneClassifier(device="cuda", freeze_depth=2, augment=False, mixup=0.0, **FAST).fit(X, y)
    assert placed == [where]
    assert clf.score(X_test, y_test) > 0.8


def test_large_arrays_are_prepared_on_the_gpu_in_bounded_batches(monkeypatch):
    from sktransfer import load_backbone
    from sktransfer.data import _batches
    from sktransfer.data._sources import ArraySource

    sizes = []
    real = _batches.prepared_batches

    def spy(source, spec, batch_size, device, **kwargs):
        sizes.append((batch_size, device.type))
        return real(source, spec, batch_size, device, **kwargs)

    monkeypatch.setattr(_batches, "prepared_batches", spy)
    spec = load_backbone("efficientnet_lite0", weights=None).preprocessing.replace(image_size=32)
    grey = torch.full((6, 3, 4096, 4096), 128, dtype=torch.uint8)  # 2**24 pixels an image
    data = _batches.PreparedImages(ArraySource(grey, (0.0, 255.0)), spec, torch.device("cuda"), True)
    assert sizes == [(4, "cuda")]  # 2**26 input pixels a batch (GPU_BATCH_INPUT_PIXELS), not 256 images
    expected = (128 / 255 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    torch.testing.assert_close(data.cache.cpu(), expected.view(1, 3, 1, 1).expand(6, 3, 32, 32), atol=1e-4, rtol=0)


def test_gpu_predictions_run_in_larger_batches_than_training(split, monkeypatch):
    import sktransfer._finetune as finetune

    X, y, X_test, _ = split
    clf = FineTuneClassifier(device="cuda", max_epochs=1, **FAST).fit(X, y)  # batch_size=16
    sizes = []
    predict_images, predict_batch_size = finetune.predict_images, finetune.predict_batch_size

    def spy(net, source, spec, device, batch_size, num_workers=0):
        sizes.append(batch_size)
        return predict_images(net, source, spec, device, batch_size, num_workers)

    monkeypatch.setattr(finetune, "predict_images", spy)
    monkeypatch.setattr(finetune, "predict_batch_size", lambda batch_size, *args: batch_size)
    by_16 = clf.predict_proba(X_test)
    monkeypatch.setattr(finetune, "predict_batch_size", predict_batch_size)
    by_256 = clf.predict_proba(X_test)
    assert sizes == [16, 256]  # 32 px: the extractor's GPU rule
    assert autocast_close(by_256, by_16)  # bf16 both: another batch, other kernels
    clf.set_params(device="cpu")
    clf.predict_proba(X_test[:20])
    assert sizes == [16, 256, 16]


def test_gpus_before_ampere_train_in_fp16_with_a_gradient_scaler(split, monkeypatch):
    """What a T4 or V100 runs (compute capability 7.x: fp16 autocast and a GradScaler), on this GPU."""
    X, y, X_test, y_test = split
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    scaled = []
    scaler_class = type(grad_scaler(torch.device("cuda")))
    original = scaler_class.scale
    monkeypatch.setattr(scaler_class, "scale", lambda self, loss: scaled.append(1) or original(self, loss))
    with conv_calls() as calls:
        clf = FineTuneClassifier(device="cuda", **FAST).fit(X, y)
    on_gpu = [call for call in stem_calls(calls, clf.net_) if call.device == "cuda"]
    assert on_gpu and all(call.dtype == torch.float16 and call.channels_last for call in on_gpu)
    assert len(scaled) >= len(clf.history_) > 0  # a scaled loss at each training step
    assert all(np.isfinite(h["train_loss"]) for h in clf.history_)
    assert clf.score(X_test, y_test) > 0.8


def test_outputs_that_overflow_fp16_are_run_again_in_float32_on_the_gpu(monkeypatch):
    """On a T4 or V100 (fp16 autocast) an output beyond 65504 is recomputed in float32 from the
    batch kept on the GPU until its asynchronous copy back has been checked."""
    from sktransfer._inference import run_batches

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    net = large_output_linear().cuda()
    batches = [(0, 3, torch.ones(3, 4, device="cuda")), (3, 6, torch.full((3, 4), 100.0, device="cuda")),
               (6, 9, torch.ones(3, 4, device="cuda"))]
    out = {}
    with pytest.warns(RuntimeWarning, match="rows 3-5 overflowed float16 autocast"):
        run_batches(net, iter(batches), torch.device("cuda"), lambda a, b, o: out.__setitem__(a, o.clone()))
    with torch.no_grad():
        expected = {start: net(x).cpu() for start, _, x in batches}
    torch.testing.assert_close(out[3], expected[3], rtol=1e-6, atol=0)  # 4e5: float32's answer
    for start in (0, 6):  # the batches that fit float16 kept its values
        torch.testing.assert_close(out[start], expected[start], rtol=1e-2, atol=0)


def test_regressor_trains_on_cuda(split):
    X, y, X_test, y_test = split
    reg = FineTuneRegressor(device="cuda", **FAST).fit(X, y.astype(float))
    assert devices(reg.net_) == {"cuda"}
    on_gpu = reg.score(X_test, y_test.astype(float))
    on_cpu = FineTuneRegressor(device="cpu", **FAST).fit(X, y.astype(float)).score(X_test, y_test.astype(float))
    assert on_gpu > 0.5 and on_gpu >= on_cpu - 0.1, (on_gpu, on_cpu)


LOAD_WITHOUT_GPU = textwrap.dedent("""
    import sys

    import joblib
    import numpy as np
    import torch

    import sktransfer

    assert not torch.cuda.is_available()
    folder = sys.argv[1]
    X = np.load(folder + "/X.npy")
    by_joblib = joblib.load(folder + "/clf.joblib")
    by_file = sktransfer.load(folder + "/clf.safetensors")
    extractor = joblib.load(folder + "/extractor.joblib")
    np.save(folder + "/joblib.npy", by_joblib.predict_proba(X))
    np.save(folder + "/file.npy", by_file.predict_proba(X))
    np.save(folder + "/embeddings.npy", extractor.transform(X))
    pinned = joblib.load(folder + "/pinned.joblib")
    try:
        pinned.predict(X)
    except ValueError as exc:
        print("pinned:", exc)
""")


def test_gpu_fitted_models_load_and_predict_where_there_is_no_gpu(split, tmp_path):
    X, y, X_test, _ = split
    clf = FineTuneClassifier(**FAST).fit(X, y)  # device="auto": the GPU here
    assert devices(clf.net_) == {"cuda"}
    on_gpu = clf.predict_proba(X_test)
    blob = pickle.dumps(clf)
    assert devices(clf.net_) == {"cuda"}  # pickling copies to the CPU, the fitted model stays
    joblib.dump(clf, tmp_path / "clf.joblib")
    clf.save(tmp_path / "clf.safetensors")
    extractor = PretrainedFeatureExtractor(image_size=32, cache=False).fit(X)
    embeddings = extractor.transform(X_test)
    joblib.dump(extractor, tmp_path / "extractor.joblib")
    joblib.dump(FineTuneClassifier(device="cuda", max_epochs=1, **FAST).fit(X, y), tmp_path / "pinned.joblib")
    np.save(tmp_path / "X.npy", X_test)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_GPU, str(tmp_path)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr
    # a model pinned to device="cuda" says so and names the fix
    assert "CUDA is not available" in done.stdout and "device='auto' or 'cpu'" in done.stdout
    # the same network's CPU predictions here
    here = pickle.loads(blob).set_params(device="cpu")
    assert devices(here.net_) == {"cpu"}
    expected = here.predict_proba(X_test)
    np.testing.assert_allclose(np.load(tmp_path / "joblib.npy"), expected, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "file.npy"), expected, atol=1e-5)
    # and the GPU's autocast predictions agree with them
    assert autocast_close(on_gpu, expected)
    assert cosines(np.load(tmp_path / "embeddings.npy"), embeddings).min() > 0.99


def state_devices(optimizer):
    return {value.device.type for state in optimizer.state.values() for key, value in state.items()
            if torch.is_tensor(value) and key != "step"}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_models_move_between_devices_for_predicting_and_partial_fit(split, optimizer):
    X, y, X_test, y_test = split
    clf = FineTuneClassifier(device="cpu", optimizer=optimizer, **FAST).fit(X, y)
    clf.partial_fit(X, y)  # the optimizer partial_fit keeps, on the CPU
    kept = clf._partial_optimizer
    on_cpu = clf.predict_proba(X_test)
    clf.set_params(device="cuda")
    moved = clf.predict_proba(X_test)
    assert devices(clf.net_) == {"cuda"}
    assert autocast_close(moved, on_cpu)
    epochs = len(clf.history_)
    clf.partial_fit(X, y)  # its state goes to the GPU, into an optimizer built for it
    assert len(clf.history_) == epochs + 1 and devices(clf.net_) == {"cuda"}
    assert clf._partial_optimizer is not kept and state_devices(clf._partial_optimizer) == {"cuda"}
    kept = clf._partial_optimizer
    clf.partial_fit(X, y)  # same device: the same optimizer goes on
    assert clf._partial_optimizer is kept
    clf.set_params(device="cpu").partial_fit(X, y)
    assert devices(clf.net_) == {"cpu"} and state_devices(clf._partial_optimizer) == {"cpu"}
    assert clf.score(X_test, y_test) > 0.8


@pytest.mark.parametrize("params", [
    pytest.param(dict(freeze_depth=2, reg_lambda=0.1), id="frozen-prefix-l2sp"),
    pytest.param(dict(freeze_depth="all", head_init="solve"), id="frozen-backbone"),
    pytest.param(dict(image_size=64, mixup=0.2), id="mixup"),
    pytest.param(dict(early_stopping=True, validation_fraction=0.2, n_iter_no_change=2, max_epochs=4,
                      lr_schedule="onecycle"), id="early-stopping"),
    pytest.param(dict(linear_probe_epochs=1, fusion_alpha=0.5, class_weight="balanced", head_hidden=(64,),
                      bn_stats="update", layer_decay=0.8), id="probe-fusion-hidden"),
    pytest.param(dict(adaptation="dann", missing_label=-1), id="dann"),
    pytest.param(dict(adaptation="coral", missing_label=-1), id="coral"),
    pytest.param(dict(adaptation="pseudo_label", missing_label=-1), id="pseudo-label"),
    pytest.param(dict(teacher="logistic", missing_label=-1), id="distillation"),
    pytest.param(dict(multi_task=True), id="multi-task"),
    pytest.param(dict(sample_weight=True, augment="flip", optimizer="sgd"), id="weights-flip-sgd"),
])
def test_the_recipe_runs_on_cuda(split, params):
    X, y, X_test, y_test = split
    params = dict(params)
    fit_kw = {}
    y_fit = y.copy()
    if params.get("missing_label") == -1:
        y_fit[150:] = -1  # half the rows unlabelled: adaptation or distillation learns from them
    if params.pop("teacher", None):
        params["teacher"] = LogisticRegression(max_iter=2000).fit(X, y)
    if params.pop("multi_task", False):
        y_fit = np.column_stack([y, y % 2])
    if params.pop("sample_weight", False):
        fit_kw["sample_weight"] = np.where(y % 2 == 0, 2.0, 1.0)
    clf = FineTuneClassifier(device="cuda", **{**FAST, **params}).fit(X, y_fit, **fit_kw)
    assert devices(clf.net_) == {"cuda"}
    assert all(np.isfinite(h["train_loss"]) for h in clf.history_)
    pred = clf.predict(X_test)
    digit = pred[:, 0] if pred.ndim == 2 else pred
    assert np.mean(digit == y_test) > 0.6


def test_killed_gpu_run_resumes_from_its_checkpoint(split, tmp_path, monkeypatch):
    X, y, _, _ = split
    kw = dict(FAST, device="cuda", max_epochs=4, linear_probe_epochs=1, checkpoint_dir=str(tmp_path))
    reference = FineTuneClassifier(**dict(kw, checkpoint_dir=None)).fit(X, y)
    with monkeypatch.context() as m:
        kill_at(m, 3)
        with pytest.raises(Killed):
            FineTuneClassifier(**kw).fit(X, y)
    assert len(list(tmp_path.glob("checkpoint-*.safetensors"))) == 1
    with monkeypatch.context() as m:
        epochs_run = kill_at(m, 0)  # counts, never kills
        resumed = FineTuneClassifier(warm_start=True, **kw).fit(X, y)
    # it went on from the two finished epochs, which it did not run again
    assert len(epochs_run) == len(reference.history_) - 2
    assert [h["phase"] for h in resumed.history_] == [h["phase"] for h in reference.history_]
    assert devices(resumed.net_) == {"cuda"}
    # their losses are the killed run's: the reference's, up to the GPU's rounding
    assert [h["train_loss"] for h in resumed.history_[:2]] == pytest.approx(
        [h["train_loss"] for h in reference.history_[:2]], rel=0.05)


def test_test_time_views_run_on_the_gpu_in_float32_grids_and_match_the_cpu(split):
    """With few images the classifier predicts over 8 warped views; on the GPU the warps are built
    outside autocast (a bf16 grid would move the samples) and agree with the CPU's."""
    X, y, X_test, _ = split
    clf = FineTuneClassifier(image_size=32, random_state=0, max_epochs=1, min_steps=10).fit(X[:60], y[:60])
    assert devices(clf.net_) == {"cuda"} and clf.test_time_augment_ == 8
    on_gpu = clf.predict_proba(X_test)
    here = pickle.loads(pickle.dumps(clf)).set_params(device="cpu")
    expected = here.predict_proba(X_test)
    assert autocast_close(on_gpu, expected)
    plain = pickle.loads(pickle.dumps(clf)).set_params(device="cpu")
    plain.test_time_views_ = plain.test_time_views_[:0]
    assert np.abs(plain.predict_proba(X_test) - expected).max() > 0.01  # the views were used
