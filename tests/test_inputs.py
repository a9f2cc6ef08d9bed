"""Every input kind gives the same embedding as the reference uint8 NHWC array."""

import numpy as np
import pytest
import torch
from PIL import Image

from sktransfer import PretrainedFeatureExtractor


@pytest.fixture(scope="module")
def rgb(photos):
    # four small real photographs, uint8 (N, H, W, 3)
    return np.stack([Image.fromarray(photos[n]).resize((48, 40)) for n in ("chelsea", "coffee", "rocket", "astronaut")])


@pytest.fixture(scope="module")
def extractor(rgb):
    return PretrainedFeatureExtractor(cache=False, image_size=32, batch_size=3).fit(rgb)


def close(a, b, tol=1e-4):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_numeric_kinds_agree(extractor, rgb):
    ref = extractor.transform(rgb)
    assert np.isfinite(ref).all() and ref.std() > 0
    float01 = rgb.astype(np.float32) / 255
    close(extractor.transform(float01), ref)
    close(extractor.transform(rgb.astype(np.uint16) * 257), ref)
    close(extractor.transform(torch.from_numpy(rgb).permute(0, 3, 1, 2)), ref)
    close(extractor.transform(torch.from_numpy(float01).permute(0, 3, 1, 2).contiguous()), ref)
    close(extractor.transform(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))), ref)  # unambiguous NCHW
    rgba = np.concatenate([rgb, np.full(rgb.shape[:3] + (1,), 7, np.uint8)], axis=3)
    close(extractor.transform(rgba), ref)  # alpha is dropped


def test_grey_kinds_agree(extractor, rgb):
    grey = rgb[..., 0]
    ref = extractor.transform(np.repeat(grey[..., None], 3, axis=3))
    close(extractor.transform(grey), ref)
    close(extractor.transform(grey[..., None]), ref)
    close(extractor.transform(torch.from_numpy(grey)), ref)
    close(extractor.transform(list(grey)), ref)
    close(extractor.transform([Image.fromarray(g) for g in grey]), ref)


def test_files_pil_and_series_agree(extractor, rgb, tmp_path):
    import pandas as pd

    ref = extractor.transform(rgb)
    paths = []
    for i, img in enumerate(rgb):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(img).save(paths[-1])
    close(extractor.transform(paths), ref)
    close(extractor.transform([Image.fromarray(img) for img in rgb]), ref)
    close(extractor.transform(pd.Series(paths)), ref)
    close(extractor.transform(pd.DataFrame({"path": paths})), ref)
    close(extractor.transform(np.asarray(paths, dtype=object)), ref)
    # RGBA PNG files decode to the same RGB
    rgba = Image.fromarray(rgb[0]).convert("RGBA")
    rgba.save(tmp_path / "rgba.png")
    close(extractor.transform([str(tmp_path / "rgba.png")]), ref[:1])


def test_files_are_decoded_lazily_one_at_a_time(extractor, rgb, tmp_path, monkeypatch):
    from sktransfer.data import _sources as _inputs

    paths = []
    for i in range(7):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rgb[i % 4]).save(paths[-1])
    sizes = []
    original = _inputs.ListSource.batch

    def counting(self, indices, draft_side=None):
        out = original(self, indices, draft_side)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(_inputs.ListSource, "batch", counting)
    extractor.transform(paths)
    assert sizes == [1] * 7  # never a batch of full-size photographs in memory


def test_mixed_sizes_equal_one_by_one(extractor, photos):
    images = [photos["chelsea"], photos["coffee"][:200, :300], photos["rocket"][..., 0]]
    together = extractor.transform(images)
    for i, img in enumerate(images):
        close(extractor.transform([img]), together[i : i + 1])


def test_tables_with_input_shape(digits):
    images, table, _ = digits
    ext = PretrainedFeatureExtractor(cache=False, image_size=32).fit(images[:20])
    ref = ext.transform(images[:20])
    close(PretrainedFeatureExtractor(cache=False, image_size=32).fit(table[:20]).transform(table[:20]), ref)
    close(PretrainedFeatureExtractor(cache=False, image_size=32, input_shape=(8, 8)).fit(table[:20]).transform(table[:20]), ref)
    close(
        PretrainedFeatureExtractor(cache=False, image_size=32, input_shape=(8, 8, 1)).fit(table[:20]).transform(table[:20]),
        ref,
    )
    with pytest.raises(ValueError, match=r"input_shape=\(7, 7\) holds 49 values but X has 64"):
        PretrainedFeatureExtractor(input_shape=(7, 7)).fit(table[:5])


def test_default_shape_of_non_square_tables(rng):
    from sktransfer.data._sources import default_input_shape

    assert default_input_shape(64) == (8, 8)
    assert default_input_shape(10) == (1, 10)
    X = rng.normal(size=(6, 10))
    Z = PretrainedFeatureExtractor(cache=False, image_size=32).fit(X).transform(X)
    assert Z.shape[0] == 6 and np.isfinite(Z).all()


def test_pixel_range_auto_learns_float_range(digits):
    images, table, _ = digits
    ext = PretrainedFeatureExtractor(cache=False, image_size=32).fit(table[:30])
    assert ext.pixel_range_ == (0.0, 16.0)
    close(ext.transform(table[:30]), PretrainedFeatureExtractor(cache=False, image_size=32).fit(table[:30] / 16).transform(table[:30] / 16))
    fixed = PretrainedFeatureExtractor(cache=False, image_size=32, pixel_range=(0, 32)).fit(table[:5])
    assert fixed.pixel_range_ == (0.0, 32.0)
    close(fixed.transform(table[:5]), ext.transform(table[:5] / 2))
    with pytest.raises(ValueError, match="pixel_range"):
        PretrainedFeatureExtractor(pixel_range=(1, 0)).fit(table[:5])


def test_caller_arrays_are_not_modified(rgb, digits):
    _, table, _ = digits
    inputs = [rgb.copy(), rgb.astype(np.float32) / 255, table[:10].copy(), torch.from_numpy(rgb.astype(np.float32))]
    for X in inputs:
        before = X.clone() if isinstance(X, torch.Tensor) else X.copy()
        PretrainedFeatureExtractor(cache=False, image_size=32).fit(X).transform(X)
        if isinstance(X, torch.Tensor):
            assert torch.equal(X, before)
        else:
            np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize(
    "X, error, match",
    [
        (np.zeros((0, 8, 8)), ValueError, "0 sample"),
        ([], ValueError, "empty"),
        (np.zeros(5), ValueError, "Expected 2D array"),
        (np.zeros((2, 3, 8, 8, 3)), ValueError, "3 or 4 dimensions"),
        (np.full((2, 8, 8), np.nan), ValueError, "NaN|infinity"),
        (np.array([[0.0, np.inf]]), ValueError, "infinity"),
        (np.zeros((2, 8, 8, 5)), ValueError, "channel axis"),
        (np.array([["a", "b"]]), ValueError, "strings|numeric"),
        ([object(), object()], TypeError, "file paths, PIL images or arrays"),
        (["/no/such/file.png"], FileNotFoundError, "/no/such/file.png"),
        (np.zeros((3, 0, 5)), ValueError, "0x5 pixels"),
        ([np.zeros((4, 4)), np.zeros((0, 5))], ValueError, r"empty image of shape \(0, 5\)"),
        (torch.zeros(2, 3, 6, 0), ValueError, "6x0 pixels"),
    ],
)
def test_bad_inputs_give_clear_errors(X, error, match):
    ext = PretrainedFeatureExtractor(cache=False, image_size=32).fit(np.zeros((1, 8, 8)))
    with pytest.raises(error, match=match):
        ext.transform(X)


def test_corrupt_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    ext = PretrainedFeatureExtractor(cache=False, image_size=32).fit(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="broken.jpg"):
        ext.transform([str(bad)])


def test_wrong_number_of_columns_at_transform(digits):
    _, table, _ = digits
    ext = PretrainedFeatureExtractor(cache=False, image_size=32).fit(table[:5])
    with pytest.raises(ValueError, match="64 features"):
        ext.transform(table[:5, :60])


def test_wide_grey_files_and_images_keep_their_brightness(extractor, rgb, tmp_path):
    """16-bit and float grey images are read on their own scale, not clipped to 0-255 by Pillow."""
    grey = rgb[..., 0]
    ref = extractor.transform(grey)
    wide = grey.astype(np.uint16) * 257
    paths = []
    for i, img in enumerate(wide):
        paths.append(str(tmp_path / f"grey{i}.png"))
        Image.fromarray(img).save(paths[-1])  # a 16-bit PNG (mode I;16)
    close(extractor.transform(paths), ref)
    # 32-bit integer and float modes (img.convert("I"), "F"): Pillow's own 0-255, as before
    close(extractor.transform([Image.fromarray(g).convert("I") for g in grey]), ref)
    close(extractor.transform([Image.fromarray(g.astype(np.float32)) for g in grey]), ref)  # mode F
    with pytest.raises(ValueError, match=r"'F' grey image .* 0-255 \(a float image of 0-1 would be all but black\)"):
        extractor.transform([Image.fromarray(grey[0].astype(np.float32) / 255)])
    Image.fromarray(wide[0].astype(np.int32)).save(tmp_path / "wide.tif")  # mode I above 255: not clipped
    with pytest.raises(ValueError, match=r"wide.tif.*'I' grey image has values from .* reads this mode as 0-255"):
        extractor.transform([str(tmp_path / "wide.tif")])


def test_big_endian_arrays_equal_native_ones(extractor, rgb):
    ref = extractor.transform(rgb)
    close(extractor.transform((rgb.astype(np.uint16) * 257).astype(">u2")), ref)
    close(extractor.transform((rgb / 255).astype(">f4")), ref)
    close(extractor.transform(list((rgb / 255).astype(">f8"))), ref)
    wide = rgb.astype(np.uint32)  # torch's uint32 (few ops take it) reads as numpy's
    close(extractor.transform(torch.from_numpy(wide.astype(np.int64)).to(torch.uint32).permute(0, 3, 1, 2)),
          extractor.transform(wide))


def test_a_fit_on_images_forgets_an_earlier_fits_columns(digits):
    import pandas as pd

    images, table, _ = digits
    ext = PretrainedFeatureExtractor(cache=False, image_size=32)
    ext.fit(pd.DataFrame(table[:5], columns=[f"px{i}" for i in range(64)]))
    assert ext.n_features_in_ == 64
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        ext.get_feature_names_out(["a"] * 64)  # scikit-learn's check of input_features
    ext.fit(images[:5])
    assert not hasattr(ext, "n_features_in_") and not hasattr(ext, "feature_names_in_")
    assert ext.transform(table[:5, :32].reshape(5, 4, 8)).shape == (5, ext.n_features_out_)


def test_one_colour_image_without_its_batch_axis_is_warned_about(extractor, rgb):
    with pytest.warns(UserWarning, match=r"read as 40 grey images of 48x3 pixels.*pass X\[None\]"):
        Z = extractor.transform(rgb[0])
    assert Z.shape == (40, extractor.n_features_out_)
    close(extractor.transform(rgb[0][None]), extractor.transform(rgb[:1]))
