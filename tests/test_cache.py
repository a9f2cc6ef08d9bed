import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

import sktransfer._extractor as extractor_module
from sktransfer import PretrainedFeatureExtractor, cache_info, clear_cache


@pytest.fixture
def counted(monkeypatch):
    """Counts images that really go through the network."""
    seen = []
    original = extractor_module.extract

    def counting(backbone, source, *args, **kwargs):
        if not (type(source).__name__ == "ArraySource" and len(source) == 1):  # not fit's shape probe
            seen.append(len(source))
        return original(backbone, source, *args, **kwargs)

    monkeypatch.setattr(extractor_module, "extract", counting)
    clear_cache()
    return seen


def test_repeated_transforms_reuse_embeddings(digits, counted):
    _, table, _ = digits
    X = table[:40]
    ext = PretrainedFeatureExtractor(image_size=32).fit(X)
    first = ext.transform(X)
    assert sum(counted) == 40
    again = PretrainedFeatureExtractor(image_size=32).fit(X)  # another instance, same settings
    np.testing.assert_array_equal(again.transform(X[10:30]), first[10:30])
    assert sum(counted) == 40 and cache_info()["hits"] >= 20


def test_fits_whose_images_are_cached_copy_no_network(digits, counted):
    _, table, _ = digits
    X = table[:30]
    first = PretrainedFeatureExtractor(image_size=32, layer="stage3").fit(X)
    Z = first.transform(X)
    again = PretrainedFeatureExtractor(image_size=32, layer="stage3").fit(X[:20])
    assert (again.layers_, again.layer_widths_, again.n_features_out_) == (
        first.layers_, first.layer_widths_, first.n_features_out_)
    np.testing.assert_array_equal(again.transform(X), Z)
    assert not again._backbone.made  # every image was a cache hit: the network was never copied
    # a new image makes the network, which is the same as the first extractor's
    fresh = table[30:33]
    np.testing.assert_allclose(again.transform(fresh), first.transform(fresh), rtol=1e-5, atol=1e-6)
    assert again._backbone.made and again.backbone_ is not first.backbone_
    assert not again.backbone_.training
    assert not any(p.requires_grad for p in again.backbone_.parameters())
    # other settings are worked out for themselves, not read from the first fit's
    other = PretrainedFeatureExtractor(image_size=32, layer="stage2").fit(X)
    assert other.layers_ != first.layers_ and other.n_features_out_ != first.n_features_out_
    assert other.transform(X[:2]).shape == (2, other.n_features_out_)


def test_a_pickled_extractor_holds_its_network_even_if_never_made(digits, counted):
    import pickle

    _, table, _ = digits
    X = table[:12]
    Z = PretrainedFeatureExtractor(image_size=32).fit(X).transform(X)
    lazy = PretrainedFeatureExtractor(image_size=32).fit(X)
    assert not lazy._backbone.made
    restored = pickle.loads(pickle.dumps(lazy))
    assert "backbone_" not in vars(restored) and restored._backbone.made
    clear_cache()  # the restored extractor must run its own network
    np.testing.assert_allclose(restored.transform(X), Z, rtol=1e-5, atol=1e-6)


def test_one_changed_pixel_gets_a_new_embedding(digits, counted):
    _, table, _ = digits
    X = table[:10].copy()
    ext = PretrainedFeatureExtractor(image_size=32).fit(X)
    before = ext.transform(X)
    X2 = X.copy()
    X2[3, 20] += 5
    after = ext.transform(X2)
    assert sum(counted) == 11  # only the changed image was recomputed
    assert not np.allclose(after[3], before[3])
    np.testing.assert_array_equal(np.delete(after, 3, 0), np.delete(before, 3, 0))
    expected = PretrainedFeatureExtractor(image_size=32, cache=False).fit(X).transform(X2)
    np.testing.assert_allclose(after, expected, rtol=1e-6)


def test_settings_that_change_the_output_are_part_of_the_key(digits, counted):
    _, table, _ = digits
    X = table[:8]
    kw = dict(layer="stage3")  # a 4x4 map at 32 px, where max and average pooling differ
    a = PretrainedFeatureExtractor(image_size=32, **kw).fit(X).transform(X)
    b = PretrainedFeatureExtractor(image_size=32, pooling="max", **kw).fit(X).transform(X)
    c = PretrainedFeatureExtractor(image_size=40, **kw).fit(X).transform(X)
    d = PretrainedFeatureExtractor(image_size=32, pixel_range=(0, 32), **kw).fit(X).transform(X)
    assert sum(counted) == 32
    for other in (b, c, d):
        assert not np.allclose(a, other)


def test_cache_can_be_switched_off(digits, counted):
    _, table, _ = digits
    ext = PretrainedFeatureExtractor(image_size=32, cache=False).fit(table[:6])
    ext.transform(table[:6])
    ext.transform(table[:6])
    assert sum(counted) == 12


def test_memory_is_bounded():
    from sktransfer.data._cache import MemoryLRU

    lru = MemoryLRU(max_bytes=3 * 400)
    for i in range(5):
        lru.put(i, np.zeros(100, np.float32))
    assert lru.nbytes <= 1200 and list(lru.data) == [2, 3, 4]
    lru.get(2)
    lru.put(5, np.zeros(100, np.float32))
    assert list(lru.data) == [4, 2, 5]


def test_disk_cache_is_shared(digits, counted, tmp_path):
    _, table, _ = digits
    X = table[:12]
    first = PretrainedFeatureExtractor(image_size=32, cache_dir=str(tmp_path)).fit(X).transform(X)
    clear_cache()  # as in a fresh process
    second = PretrainedFeatureExtractor(image_size=32, cache_dir=str(tmp_path)).fit(X).transform(X)
    np.testing.assert_array_equal(first, second)
    assert sum(counted) == 12
    assert len(list(tmp_path.rglob("*.npy"))) == 12


def test_grid_search_passes_over_the_data_about_once(digits, counted):
    _, table, y = digits
    X, y = table[:100], y[:100]
    grid = GridSearchCV(
        make_pipeline(PretrainedFeatureExtractor(image_size=32, layer="stage4"), LogisticRegression(max_iter=300)),
        {"logisticregression__C": [0.1, 1.0, 10.0]}, cv=3,
    ).fit(X, y)
    assert grid.best_score_ > 0.3
    # without the cache: 3 C x 3 folds x (fit + score) + refit = 21 passes' worth of images
    assert sum(counted) <= 1.5 * len(X)


def test_the_key_knows_the_network_the_pooling_of_fit_and_how_items_are_read(digits, counted):
    """Cached embeddings are never served for another architecture, another network assigned to
    ``backbone_``, a pooling changed after fit, a palette or another reading of the same bytes."""
    import torch
    from PIL import Image

    from sktransfer.backbones._loading import load_backbone

    images, _, _ = digits
    X = (images[:6] * 16).astype(np.uint8)
    conv = torch.nn.Conv2d(3, 4, 3)
    relu, tanh = (PretrainedFeatureExtractor(torch.nn.Sequential(conv, act), layer=None, image_size=16).fit(X)
                  for act in (torch.nn.ReLU(), torch.nn.Tanh()))
    assert not np.allclose(relu.transform(X), tanh.transform(X))  # same weights, other structure

    ext = PretrainedFeatureExtractor(image_size=32, layer="stage3").fit(X)
    avg = ext.transform(X[:3])
    ext.set_params(pooling="max")  # takes effect at the next fit: transform keeps fit's pooling
    np.testing.assert_array_equal(ext.transform(X), PretrainedFeatureExtractor(
        image_size=32, layer="stage3", cache=False).fit(X).transform(X))
    np.testing.assert_array_equal(ext.transform(X[:3]), avg)
    assert ext.pooling_ == "avg" and ext.fit(X).pooling_ == "max"
    assert not np.allclose(ext.transform(X[:3]), avg)

    ext = PretrainedFeatureExtractor(image_size=32, layer="stage3").fit(X)
    before = ext.transform(X)
    other = load_backbone("efficientnet_lite0")
    with torch.no_grad():
        other.model.conv_stem.weight.mul_(-1.0)
    ext.backbone_ = other
    assert not np.allclose(ext.transform(X), before)

    grey = Image.fromarray(X[0]).convert("P")
    recoloured = grey.copy()
    recoloured.putpalette([255 - v for v in grey.getpalette()])
    a, b = ext.transform([grey])[0], ext.transform([recoloured])[0]  # the second call asks the cache
    assert not np.allclose(a, b)

    cube = np.random.default_rng(0).integers(0, 255, (3, 16, 4), dtype=np.uint8)
    ext = PretrainedFeatureExtractor(image_size=32, layer="stage3").fit(X)
    as_tensor, as_array = ext.transform([torch.from_numpy(cube)]), ext.transform([cube])  # 16x4 RGB, 3x16 RGBA
    assert not np.allclose(as_tensor, as_array)
    np.testing.assert_array_equal(as_array, PretrainedFeatureExtractor(
        image_size=32, layer="stage3", cache=False).fit(X).transform([cube]))


def test_a_cache_dir_that_cannot_be_written_warns_and_the_embeddings_come_back(digits, counted, tmp_path):
    _, table, _ = digits
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    ext = PretrainedFeatureExtractor(image_size=32, cache_dir=str(blocked)).fit(table[:6])
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        Z = ext.transform(table[:6])
    np.testing.assert_array_equal(Z, PretrainedFeatureExtractor(image_size=32, cache=False).fit(table[:6])
                                  .transform(table[:6]))
