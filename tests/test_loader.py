"""Image files: decoded in DataLoader workers as in the main process; large JPEG files at a reduced scale."""

import numpy as np
import pytest
from PIL import Image

from sktransfer import FineTuneClassifier, Preprocessing, PretrainedFeatureExtractor
from sktransfer.data._batches import resolve_num_workers
from sktransfer.data._sources import ListSource


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, photos):
    """40 files of mixed sizes and modes (RGB, grey, RGBA) cut from real photographs."""
    folder = tmp_path_factory.mktemp("images")
    paths, labels = [], []
    rng = np.random.default_rng(0)
    for i in range(40):
        name = ["chelsea", "coffee", "rocket", "astronaut"][i % 4]
        img = photos[name]
        h, w = rng.integers(40, 90, size=2)
        r, c = rng.integers(0, 200, size=2)
        crop = Image.fromarray(img[r:r + h, c:c + w])
        crop = crop.convert(["RGB", "L", "RGBA"][i % 3])
        path = folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        (crop.convert("RGB") if path.suffix == ".jpg" else crop).save(path)
        paths.append(str(path))
        labels.append(i % 4)
    return paths, np.array(labels)


def test_workers_give_the_embeddings_of_the_main_process(image_files):
    paths, _ = image_files
    kw = dict(image_size=64, batch_size=8, cache=False)  # at 32 px the last layer is mostly zeros
    main = PretrainedFeatureExtractor(num_workers=0, **kw).fit(paths).transform(paths)
    workers = PretrainedFeatureExtractor(num_workers=2, **kw).fit(paths).transform(paths)
    np.testing.assert_array_equal(workers, main)
    # and the embeddings are not all alike: the files were decoded, in order
    assert np.corrcoef(main)[0, 1:].min() < 0.99
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths[:5]]
    in_memory = PretrainedFeatureExtractor(**kw).fit(arrays).transform(arrays)
    np.testing.assert_allclose(workers[:5], in_memory, rtol=1e-5, atol=1e-5)


def test_classifier_reads_files_in_workers(image_files):
    paths, y = image_files
    kw = dict(image_size=32, batch_size=8, max_epochs=1, min_steps=0, random_state=0)
    main = FineTuneClassifier(num_workers=0, **kw).fit(paths, y)
    workers = FineTuneClassifier(num_workers=1, **kw).fit(paths, y)
    np.testing.assert_array_equal(workers.predict_proba(paths), main.predict_proba(paths))


def test_auto_uses_workers_for_files_only(image_files, monkeypatch):
    import sktransfer.data._batches as loader
    from sktransfer.data._sources import as_images

    monkeypatch.setattr(loader.os, "cpu_count", lambda: 8)
    paths, _ = image_files
    files = as_images(paths, None)
    arrays = as_images(np.zeros((40, 8, 8)), None)
    assert resolve_num_workers("auto", files, batch_size=8) == 4
    assert resolve_num_workers("auto", files, batch_size=64) == 0  # one batch: not worth a process
    assert resolve_num_workers("auto", arrays, batch_size=8) == 0
    assert resolve_num_workers(3, arrays, batch_size=8) == 0  # arrays are never sent to workers
    assert resolve_num_workers(3, files, batch_size=64) == 3
    monkeypatch.setattr(loader.os, "cpu_count", lambda: 2)
    assert resolve_num_workers("auto", files, batch_size=8) == 0  # measured slower on 2 cores


def test_daemon_processes_decode_in_process(image_files, monkeypatch):
    """A Dask worker is a daemon: it cannot start DataLoader workers."""
    import multiprocessing

    import sktransfer.data._batches as loader
    from sktransfer.data._sources import as_images

    monkeypatch.setattr(loader.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True)
    files = as_images(image_files[0], None)
    assert resolve_num_workers("auto", files, batch_size=8) == 0
    assert resolve_num_workers(0, files, batch_size=8) == 0
    with pytest.raises(ValueError, match="daemon .*num_workers=0"):
        resolve_num_workers(2, files, batch_size=8)


@pytest.mark.parametrize("bad", [-1, 1.5, "two", True])
def test_bad_num_workers(bad):
    X = np.zeros((4, 8, 8))
    with pytest.raises(ValueError, match=r"'num_workers' parameter of \w+ must be"):
        PretrainedFeatureExtractor(num_workers=bad).fit(X)


def test_corrupt_file_in_a_worker_names_the_file(image_files, tmp_path):
    paths, _ = image_files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    files = paths[:20] + [str(bad)] + paths[20:]
    ext = PretrainedFeatureExtractor(image_size=32, batch_size=8, num_workers=1, cache=False).fit(paths)
    with pytest.raises(ValueError, match="broken.png"):
        ext.transform(files)


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory, photos):
    """A real photograph as a 1024x768 JPEG file, and the array a full decode of it gives."""
    path = tmp_path_factory.mktemp("large") / "chelsea.jpg"
    Image.fromarray(photos["chelsea"]).resize((1024, 768), Image.LANCZOS).save(path, quality=92)
    with Image.open(path) as img:
        full = np.asarray(img.convert("RGB"))
    return str(path), full


def test_large_jpeg_files_are_decoded_at_a_reduced_scale(large_jpeg, tmp_path):
    path, full = large_jpeg
    source = ListSource([path], None)
    assert tuple(source.batch([0])[0].shape) == (3, 768, 1024)
    # the largest reduction of 1/2, 1/4, 1/8 whose sides all stay >= draft_side
    assert tuple(source.batch([0], draft_side=128)[0].shape) == (3, 192, 256)  # 1/8 would leave 96 rows
    assert tuple(source.batch([0], draft_side=400)[0].shape) == (3, 768, 1024)  # 1/2 would leave 384
    png, mpo = tmp_path / "chelsea.png", tmp_path / "camera.mpo"  # MPO: a camera's JPEG with a preview
    Image.fromarray(full).save(png)
    Image.fromarray(full).save(mpo, "MPO", save_all=True, append_images=[Image.fromarray(full[::4, ::4])])
    assert tuple(ListSource([str(png)], None).batch([0], draft_side=128)[0].shape) == (3, 768, 1024)
    with Image.open(mpo) as img:
        assert img.format == "MPO"
    assert tuple(ListSource([str(mpo)], None).batch([0], draft_side=128)[0].shape) == (3, 192, 256)

    kw = dict(image_size=64, cache=False)  # 768 rows >= 2 x 64: decoded at 1/4
    drafted = PretrainedFeatureExtractor(**kw).fit([path]).transform([path])
    exact = PretrainedFeatureExtractor(preprocessing={"jpeg_draft": False}, **kw).fit([path])
    full_size = exact.transform([path])
    # jpeg_draft=False: the file gives the embedding of its fully decoded pixels
    np.testing.assert_allclose(full_size, exact.transform(full[None]), rtol=1e-4, atol=1e-4)
    # the default decodes less and agrees closely, but is not the same computation
    cosine = (drafted * full_size).sum() / np.linalg.norm(drafted) / np.linalg.norm(full_size)
    assert cosine > 0.995
    assert np.abs(drafted - full_size).max() > 1e-3
    # the embedding cache tells the two decodings apart
    cached = [PretrainedFeatureExtractor(image_size=64, preprocessing=p).fit([path]).transform([path])
              for p in (None, {"jpeg_draft": False}, None)]
    np.testing.assert_allclose(cached[0], drafted, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cached[1], full_size, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(cached[2], cached[0])
    # a file smaller than twice the input size is decoded whole either way
    small = PretrainedFeatureExtractor(image_size=512, cache=False)
    np.testing.assert_array_equal(small.fit([path]).transform([path]),
                                  small.set_params(preprocessing={"jpeg_draft": False}).fit([path]).transform([path]))


def test_jpeg_draft_must_be_a_boolean():
    with pytest.raises(TypeError, match="jpeg_draft must be True or False"):
        Preprocessing(jpeg_draft="yes")
    assert Preprocessing(jpeg_draft=np.False_).jpeg_draft is False


def test_images_given_one_at_a_time_are_prepared_in_bounded_groups(monkeypatch, photos, tmp_path):
    import torch

    from sktransfer.data import _preprocessing as prep

    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 256, (3, 50, 60), dtype=np.uint8)) for _ in range(5)]
    images += [torch.from_numpy(rng.random((3, 50, 60), dtype=np.float32)) for _ in range(2)]
    images += [torch.from_numpy(rng.integers(0, 256, (1, 40, 40), dtype=np.uint8)) for _ in range(3)]
    images += [images[0]]
    spec, cpu = Preprocessing(image_size=32), torch.device("cpu")
    one_by_one = torch.cat([prep.prepare_batch(img[None], spec, cpu) for img in images])
    groups = []
    original = prep.prepare_batch

    def counting(batch, *args):
        if not isinstance(batch, list):
            groups.append(len(batch))
        return original(batch, *args)

    monkeypatch.setattr(prep, "prepare_batch", counting)
    together = prep.prepare_images(iter(images), spec, cpu, channels_last=True)
    # runs of one shape and dtype go together, and each image's values are its own
    assert groups == [5, 2, 3, 1]
    assert together.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(together, one_by_one, rtol=0, atol=0)
    groups.clear()
    monkeypatch.setattr(prep, "GROUP_BYTES", 2 * 3 * 50 * 60)  # two of the uint8 images at most
    torch.testing.assert_close(prep.prepare_images(images, spec, cpu), one_by_one, rtol=0, atol=0)
    assert groups == [2, 2, 1, 1, 1, 3, 1]  # a float image (4 bytes a value) alone is over

    # lossless files and the arrays of their pixels give the same embeddings, to the last bit
    rgb = np.stack([photos[n][:120, :100] for n in ("chelsea", "coffee", "rocket", "astronaut")])
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rgb[i % 4]).save(paths[-1])
    ext = PretrainedFeatureExtractor(image_size=32, batch_size=4, cache=False).fit(paths)
    np.testing.assert_array_equal(ext.transform(paths), ext.transform(rgb[[0, 1, 2, 3, 0, 1]]))
