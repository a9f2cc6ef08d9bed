import pickle

import joblib
import numpy as np
import pytest
import torch

from sktransfer import PretrainedFeatureExtractor
from sktransfer._extractor import _batch_size


@pytest.fixture(scope="module")
def X(photos):
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(photos[n]).resize((40, 40))) for n in ("chelsea", "coffee", "rocket")])


def prepared(ext, X):
    from sktransfer.data._preprocessing import prepare_batch

    return prepare_batch(torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255, ext.preprocessing_, torch.device("cpu"))


def test_fit_does_not_touch_init_params_and_init_loads_nothing(monkeypatch):
    import sktransfer._extractor as mod

    monkeypatch.setattr(mod, "setup_backbone", lambda *a, **k: pytest.fail("loaded in __init__"))
    ext = PretrainedFeatureExtractor(cache=False, layer=["stage1"], batch_size=3)
    assert ext.get_params()["layer"] == ["stage1"]


def test_auto_batch_size_spends_a_pixel_budget_per_device():
    sizes = (32, 64, 96, 128, 224, 256, 320, 512, 1024)
    # the CPU's caches favour small batches of large images; a GPU, batches that spread its launches
    assert [_batch_size("auto", torch.device("cpu"), s) for s in sizes] == [64, 64, 16, 16, 8, 8, 8, 8, 8]
    assert [_batch_size("auto", torch.device("cuda"), s) for s in sizes] == [256, 256, 256, 256, 256, 256, 128,
                                                                               64, 16]
    assert _batch_size(5, torch.device("cuda"), 224) == 5
    # arrays reach a GPU at their own size before it resizes them: at most 2**26 of their pixels a batch
    big = [_batch_size("auto", torch.device("cuda"), 224, side * side) for side in (256, 512, 1024, 2048, 4096)]
    assert big == [256, 256, 64, 16, 16]
    assert _batch_size("auto", torch.device("cpu"), 224, 2048 * 2048) == 8  # the CPU resizes batch by batch


def test_transform_sizes_batches_by_the_pixels_that_reach_the_device(X, tmp_path, monkeypatch):
    import sktransfer._extractor as extractor_module
    from PIL import Image

    seen = []

    def spy(*args):
        seen.append(args[3])
        return _batch_size(*args)

    monkeypatch.setattr(extractor_module, "_batch_size", spy)
    ext = PretrainedFeatureExtractor(image_size=32, cache=False).fit(X)
    ext.transform(X)  # (3, 40, 40, 3) arrays
    paths = [str(tmp_path / f"{i}.png") for i in range(len(X))]
    for path, image in zip(paths, X):
        Image.fromarray(image).save(path)
    ext.transform(paths)  # files are resized before they reach it
    ext.set_params(cache=True).transform(X[::-1])  # the cache's subset of arrays
    assert seen == [40 * 40, None, 40 * 40]


@pytest.mark.parametrize("queue", [True, False])
def test_batches_are_handed_on_as_soon_as_they_run_on_the_cpu(queue):
    from sktransfer._inference import run_batches

    events = []

    def batches():
        for k in range(3):
            events.append(("drawn", k))
            yield k, k + 1, torch.full((1, 2), float(k))

    run_batches(lambda x: x * 2, batches(), torch.device("cpu"),
                lambda start, stop, out: events.append(("emitted", start, out.tolist())), queue=queue)
    # only a GPU hands a batch on one behind (its copy back runs while the next batch is queued)
    assert events == [("drawn", 0), ("emitted", 0, [[0.0, 0.0]]), ("drawn", 1), ("emitted", 1, [[2.0, 2.0]]),
                      ("drawn", 2), ("emitted", 2, [[4.0, 4.0]])]


def test_embedding_is_average_pooled_last_feature_map(X):
    ext = PretrainedFeatureExtractor(cache=False, image_size=64, layer=None).fit(X)
    Z = ext.transform(X)
    assert Z.shape == (3, 1280)
    with torch.inference_mode():
        fmap = ext.backbone_.model.forward_features(prepared(ext, X))
    np.testing.assert_allclose(Z, fmap.mean((2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ext.get_feature_names_out()[:2], ["embedding_0", "embedding_1"])


def test_logits_equal_the_model_output(X):
    ext = PretrainedFeatureExtractor(cache=False, layer="logits", image_size=64).fit(X)
    with torch.inference_mode():
        expected = ext.backbone_.model(prepared(ext, X)).numpy()
    np.testing.assert_allclose(ext.transform(X), expected, rtol=1e-4, atol=1e-4)


def test_poolings_relate_to_the_flattened_map(X):
    flat = PretrainedFeatureExtractor(cache=False, layer="stage3", pooling=None, image_size=64).fit(X).transform(X)
    c = 40  # blocks.2 of Lite0 has 40 channels at stride 8
    maps = flat.reshape(3, c, -1)
    results = {p: PretrainedFeatureExtractor(cache=False, layer="stage3", pooling=p, image_size=64).fit(X).transform(X)
               for p in ("avg", "max", "avgmax", "catavgmax", "gem")}
    np.testing.assert_allclose(results["avg"], maps.mean(2), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["max"], maps.max(2), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["avgmax"], (maps.mean(2) + maps.max(2)) / 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results["catavgmax"], np.hstack([maps.mean(2), maps.max(2)]), rtol=1e-4, atol=1e-5)
    gem = np.mean(np.clip(maps, 1e-6, None) ** 3, axis=2) ** (1 / 3)
    np.testing.assert_allclose(results["gem"], gem, rtol=1e-3, atol=1e-5)


def test_intermediate_layers_and_lists(X):
    ext = PretrainedFeatureExtractor(cache=False, layer=["stage2", "blocks.4", "logits", None], image_size=64).fit(X)
    assert ext.layer_widths_ == [24, 112, 1000, 1280]
    Z = ext.transform(X)
    assert Z.shape == (3, 24 + 112 + 1000 + 1280)
    # each block equals the single-layer extraction
    for (label, _), start, width in zip(ext.layers_, np.cumsum([0] + ext.layer_widths_[:-1]), ext.layer_widths_):
        alone = PretrainedFeatureExtractor(cache=False, layer=None if label == "embedding" else label, image_size=64).fit(X)
        np.testing.assert_allclose(Z[:, start:start + width], alone.transform(X), rtol=1e-4, atol=1e-4)
    names = ext.get_feature_names_out()
    assert names[0] == "stage2_0" and names[24] == "blocks.4_0" and names[-1] == "embedding_1279"


def test_stage_alias_is_the_stage_module(X):
    a = PretrainedFeatureExtractor(cache=False, layer="stage4", image_size=64).fit(X)
    b = PretrainedFeatureExtractor(cache=False, layer="blocks.3", image_size=64).fit(X)
    np.testing.assert_allclose(a.transform(X), b.transform(X), rtol=1e-5)


def test_unknown_layer_lists_valid_names(X):
    with pytest.raises(ValueError, match=r"Unknown layer 'layer9'.*stage0.*blocks"):
        PretrainedFeatureExtractor(cache=False, layer="layer9").fit(X)
    with pytest.raises(TypeError, match="'layer' parameter of PretrainedFeatureExtractor must be"):
        PretrainedFeatureExtractor(cache=False, layer=3).fit(X)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"pooling": "median"}, r"'pooling' parameter of \w+ must be"),
        ({"batch_size": 0}, r"'batch_size' parameter of \w+ must be"),
        ({"image_size": -3}, r"'image_size' parameter of \w+ must be"),
        ({"device": "tpu"}, r"'device' parameter of \w+ must be"),
    ],
)
def test_bad_parameters(X, params, match):
    with pytest.raises(ValueError, match=match):
        PretrainedFeatureExtractor(**params).fit(X)


def test_transform_before_fit(X):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PretrainedFeatureExtractor().transform(X)


def test_batches_do_not_change_results(X):
    big = PretrainedFeatureExtractor(cache=False, image_size=48, batch_size=64).fit(X).transform(X)
    small = PretrainedFeatureExtractor(cache=False, image_size=48, batch_size=1).fit(X).transform(X)
    np.testing.assert_allclose(big, small, rtol=1e-4, atol=1e-5)


def test_frozen_and_in_eval_mode(X):
    ext = PretrainedFeatureExtractor(cache=False, image_size=32).fit(X)
    assert not ext.backbone_.training
    assert not any(p.requires_grad for p in ext.backbone_.parameters())
    before = {k: v.clone() for k, v in ext.backbone_.state_dict().items()}
    ext.transform(X)
    for k, v in ext.backbone_.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, before[k])


def test_pandas_output(X):
    pd = pytest.importorskip("pandas")
    ext = PretrainedFeatureExtractor(cache=False, image_size=32).set_output(transform="pandas")
    out = ext.fit_transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns[:2]) == ["stage3_0", "stage3_1"]  # layer="auto" at 32 px
    np.testing.assert_allclose(out.to_numpy(), ext.set_output(transform="default").transform(X))


def test_pickle_and_joblib_round_trip(X, tmp_path):
    ext = PretrainedFeatureExtractor(cache=False, image_size=32, layer=["stage3", None]).fit(X)
    Z = ext.transform(X)
    again = pickle.loads(pickle.dumps(ext))
    np.testing.assert_array_equal(again.transform(X), Z)
    joblib.dump(ext, tmp_path / "ext.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "ext.joblib").transform(X), Z)


def test_verbose_shows_a_progress_bar(X, capsys):
    PretrainedFeatureExtractor(cache=False, image_size=32, verbose=1, batch_size=1).fit(X).transform(X)
    assert "embedding" in capsys.readouterr().err


def test_in_a_pipeline_on_digits(digits):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, table, y = digits
    model = make_pipeline(
        PretrainedFeatureExtractor(cache=False, image_size=64, layer="stage5"), StandardScaler(),
        LogisticRegression(max_iter=2000, C=0.1),
    )
    model.fit(table[:300], y[:300])
    assert model.score(table[300:600], y[300:600]) > 0.8  # chance is 0.1


@pytest.mark.parametrize("layer", [None, "logits", ["stage3", None]])
def test_optimized_inference_equals_eager(X, layer):
    eager = PretrainedFeatureExtractor(cache=False, image_size=64, layer=layer, optimize=False).fit(X)
    fast = PretrainedFeatureExtractor(cache=False, image_size=64, layer=layer, optimize=True).fit(X)
    a, b = eager.transform(X), fast.transform(X)
    assert isinstance(fast._optimized.traced, torch.jit.ScriptModule)  # really traced, checked, kept
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.9999
    # batch composition does not change results, and the traced module is never pickled
    np.testing.assert_allclose(fast.transform(X[:1]), b[:1], rtol=1e-5, atol=1e-6)
    again = pickle.loads(pickle.dumps(fast))
    assert not hasattr(again, "_optimized")
    np.testing.assert_allclose(again.transform(X), b, rtol=1e-5, atol=1e-6)


def test_auto_builds_the_traced_module_for_large_transforms_then_uses_it_for_any(X, monkeypatch, fresh_builds):
    import sktransfer._extractor as mod

    monkeypatch.setattr(mod, "OPTIMIZE_MIN_IMAGES", 6)
    ext = PretrainedFeatureExtractor(cache=False, image_size=32).fit(X)
    small = ext.transform(X)
    assert not hasattr(ext, "_optimized")  # a small transform builds nothing
    ext.transform(np.concatenate([X, X]))
    calls = []
    traced = ext._optimized.traced
    monkeypatch.setattr(ext._optimized.entry, "module", lambda x: calls.append(len(x)) or traced(x))
    np.testing.assert_allclose(ext.transform(X), small, rtol=1e-4, atol=1e-5)
    assert calls == [64]  # the built module runs the small transform too, padded to the batch (64 at 32 px)


def test_optimization_falls_back_to_eager_when_tracing_fails(X, monkeypatch, fresh_builds):
    import sktransfer.backbones._layer_outputs as mod

    def broken(*args, **kwargs):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(mod.torch.jit, "trace", broken)
    ext = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=True).fit(X)
    Z = ext.transform(X)
    assert ext._optimized is None
    np.testing.assert_allclose(Z, PretrainedFeatureExtractor(cache=False, image_size=32, optimize=False).fit(X).transform(X))


def test_a_traced_module_that_disagrees_is_dropped_on_its_first_batch(X, monkeypatch, fresh_builds):
    import sktransfer.backbones._layer_outputs as mod

    real = mod.torch.jit.freeze
    monkeypatch.setattr(mod.torch.jit, "freeze", lambda m: (lambda x: -real(m)(x)))
    ext = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=True).fit(X)
    Z = ext.transform(X)
    assert ext._optimized is not None and ext._optimized.traced is None  # built, checked, dropped
    eager = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=False).fit(X).transform(X)
    np.testing.assert_allclose(Z, eager, rtol=1e-5, atol=1e-6)


def test_a_trace_that_baked_in_its_batch_size_is_caught_at_the_first_other_size(X, monkeypatch, fresh_builds):
    import sktransfer.backbones._layer_outputs as mod

    real = mod.torch.jit.freeze

    def frozen_for_two(m):
        module = real(m)
        return lambda x: module(x) if x.shape[0] == mod.TRACE_BATCH else -module(x)

    monkeypatch.setattr(mod.torch.jit, "freeze", frozen_for_two)
    eager = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=False).fit(X).transform(X)
    # batches of two (the third image, doubled, is a batch of two too): right at the traced size, kept
    two = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=True, batch_size=2).fit(X)
    np.testing.assert_allclose(two.transform(X), eager, rtol=1e-4, atol=1e-5)
    assert two._optimized.traced is not None
    # another extractor of the setting runs batches of four: caught on its first, eager from then on
    four = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=True, batch_size=4).fit(X)
    np.testing.assert_allclose(four.transform(X), eager, rtol=1e-4, atol=1e-5)
    assert four._optimized.entry is two._optimized.entry
    assert four._optimized.traced is None and two._optimized.traced is None


def test_traced_embeddings_do_not_depend_on_the_batch_they_come_in(X, fresh_builds):
    """Padded to one batch size and always from the compiled graph (the profiling run thrown away):
    equal to the bit, however the images are split and whichever call computes them."""
    ext = PretrainedFeatureExtractor(cache=False, image_size=64, layer=None, optimize=True).fit(X)
    whole = ext.transform(X)
    np.testing.assert_array_equal(ext.transform(X), whole)
    parts = np.concatenate([ext.transform(X[:1]), ext.transform(X[1:])])
    np.testing.assert_array_equal(parts, whole)
    np.testing.assert_array_equal(ext.transform(X[::-1]), whole[::-1])
    assert ext._optimized.traced is not None and ext._optimized.entry.checked == {64}  # "auto" at 64 px
    # a batch size set after fit: the same module, padded to the new size (whose kernels round
    # differently), and from then on equal to the bit again
    ext.set_params(batch_size=2)
    pairs = ext.transform(X)
    np.testing.assert_allclose(pairs, whole, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate([ext.transform(X[:1]), ext.transform(X[1:])]), pairs)
    assert ext._optimized.batch_size == 2 and ext._optimized.entry.checked == {64, 2}


def test_the_fusion_switch_is_on_while_the_traced_module_runs_and_put_back_after(X, monkeypatch, fresh_builds):
    import sktransfer.backbones._layer_outputs as mod

    seen = []
    real = mod.torch.jit.freeze

    def recording(m):
        frozen = real(m)
        return lambda x: seen.append(torch._C._jit_llga_enabled()) or frozen(x)

    monkeypatch.setattr(mod.torch.jit, "freeze", recording)
    for user_setting in (False, True):
        torch.jit.enable_onednn_fusion(user_setting)
        try:
            ext = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=True).fit(X)
            ext.transform(X)
            assert torch._C._jit_llga_enabled() is user_setting
            with mod.onednn_fusion():  # a nested scope keeps it on; the outer one puts it back
                ext.transform(X)
                assert torch._C._jit_llga_enabled()
            assert torch._C._jit_llga_enabled() is user_setting
        finally:
            torch.jit.enable_onednn_fusion(False)
    assert len(seen) == 5 and all(seen)  # profiling run + checked run, then one call per transform


def test_rows_of_zeros_pass_the_traced_modules_check(X, fresh_builds):
    """At 32 px Lite0's last map is 1x1 and its ReLU zeroes two of the photographs' embeddings:
    no cosine, but the traced module is right and is kept."""
    ext = PretrainedFeatureExtractor(cache=False, image_size=32, layer=None, optimize=True).fit(X)
    Z = ext.transform(X)
    assert (np.abs(Z[:2]).max(1) == 0).any()  # in the first batch's two checked rows
    assert ext._optimized.traced is not None
    eager = PretrainedFeatureExtractor(cache=False, image_size=32, layer=None, optimize=False).fit(X)
    np.testing.assert_allclose(Z, eager.transform(X), rtol=1e-4, atol=1e-5)


def test_extractors_of_a_process_share_one_traced_module_per_setting(X, monkeypatch, fresh_builds):
    """A grid search fits many extractors with one setting: the first traces, the others reuse it
    without copying the network; a wrong answer sends them all to eager execution, an error only
    the extractor that met it."""
    import sktransfer.backbones._layer_outputs as mod
    from sktransfer._extractor_setup import SharedTraces

    traces = []
    real = mod.torch.jit.trace
    monkeypatch.setattr(mod.torch.jit, "trace", lambda *a, **k: traces.append(1) or real(*a, **k))
    eager = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=False).fit(X).transform(X)

    def traced_extractor(**params):
        return PretrainedFeatureExtractor(cache=False, image_size=32, optimize=True, **params).fit(X)

    first = traced_extractor()
    np.testing.assert_allclose(first.transform(X), eager, rtol=1e-4, atol=1e-5)
    second, third = traced_extractor(), traced_extractor()
    for ext in (second, third):
        np.testing.assert_allclose(ext.transform(X), eager, rtol=1e-4, atol=1e-5)
        assert ext._optimized.entry is first._optimized.entry
        assert not ext._backbone.made  # checked already: the network was never copied
    assert len(traces) == 1
    # "auto" on a small transform of a new extractor stays eager: its results do not depend on
    # what other extractors of the process did
    small = PretrainedFeatureExtractor(cache=False, image_size=32).fit(X)
    small.transform(X[:2])
    assert not hasattr(small, "_optimized")
    # another setting traces its own; unpickled extractors trace their own
    other = traced_extractor(pooling="max")
    other.transform(X)
    assert len(traces) == 2 and other._optimized.entry is not first._optimized.entry
    again = pickle.loads(pickle.dumps(second))
    np.testing.assert_allclose(again.transform(X), eager, rtol=1e-4, atol=1e-5)
    assert len(traces) == 3 and again._optimized.entry is not first._optimized.entry
    # an error is this extractor's trouble (memory...): it goes eager, the others keep the module
    entry = first._optimized.entry
    module = entry.module
    entry.module = lambda x: (_ for _ in ()).throw(RuntimeError("out of memory"))
    np.testing.assert_allclose(second.transform(X), eager, rtol=1e-4, atol=1e-5)
    assert second._optimized.traced is None and entry.module is not None
    entry.module = module
    np.testing.assert_allclose(first.transform(X), eager, rtol=1e-4, atol=1e-5)
    assert first._optimized.traced is module
    # a wrong answer found by one extractor holds for all: eager (and right) from then on
    entry.width = -1
    np.testing.assert_allclose(third.transform(X), eager, rtol=1e-4, atol=1e-5)
    assert entry.module is None and first._optimized.traced is None
    assert third._backbone.made  # eager execution copied the network
    # at most MAX_KEPT settings are kept per built network (each holds a copy of the weights)
    shared = SharedTraces()
    n = SharedTraces.MAX_KEPT
    for key in range(n + 2):
        shared.entry(key, lambda key=key: mod.TraceEntry(key))
    assert list(shared._entries) == list(range(2, n + 2))
    assert shared.entry(n + 1, lambda: pytest.fail("built twice")).module == n + 1


def test_a_network_copied_during_a_transform_is_a_normal_network(X, fresh_builds):
    """The lazy copy is made inside the transform's inference mode; it must still work with autograd."""
    PretrainedFeatureExtractor(cache=False, image_size=32).fit(X)  # the process's first: not lazy
    ext = PretrainedFeatureExtractor(cache=False, image_size=32, optimize=False).fit(X)
    assert not ext._backbone.made
    ext.transform(X)
    assert ext._backbone.made
    params = list(ext.backbone_.parameters())
    assert not any(p.is_inference() for p in params)
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    ext.backbone_.forward_features(x).sum().backward()
    assert x.grad is not None
