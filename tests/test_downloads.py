"""Weights by name download into the standard caches on first use; offline switch; failures.

The hub is simulated: torch.hub's download function is replaced by one that writes a local
state dict (and counts its calls), or pointed at a server on 127.0.0.1. Nothing leaves the
machine.
"""

import socket
import threading
import time
import urllib.error

import numpy as np
import pytest
import torch
import torch.hub

from sktransfer import PretrainedFeatureExtractor, WeightsNotFoundError, load_backbone

RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture
def online(empty_caches, monkeypatch):
    """Empty caches and no offline switch: a missing file is downloaded."""
    monkeypatch.delenv("SKTRANSFER_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return empty_caches


@pytest.fixture
def fake_hub(monkeypatch):
    """torch.hub.download_url_to_file writing a random resnet18's state dict; records each call."""
    import torchvision

    source = torchvision.models.resnet18(weights=None).state_dict()
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append({"url": url, "dst": dst, "hash_prefix": hash_prefix, "progress": progress})
        torch.save(source, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    return calls, source


def test_first_use_downloads_once_into_the_torch_hub_cache(online, fake_hub, rng):
    calls, source = fake_hub
    X = rng.random((3, 32, 32), dtype=np.float32)
    first = PretrainedFeatureExtractor("resnet18", image_size=32, cache=False).fit(X)
    assert len(calls) == 1
    path = online / "torch" / "hub" / "checkpoints" / RESNET18_FILE
    assert calls[0]["url"] == f"https://download.pytorch.org/models/{RESNET18_FILE}"
    assert calls[0]["dst"] == str(path) and path.is_file()
    assert calls[0]["hash_prefix"] == "f37072fd"  # torch.hub checks the file against it
    assert calls[0]["progress"] is False  # verbose=0: no progress bar
    for name, tensor in first.backbone_.model.state_dict().items():
        assert torch.equal(tensor, source[name])
    # the second fit reads the cache
    second = PretrainedFeatureExtractor("resnet18", image_size=32, cache=False, verbose=1).fit(X)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.transform(X), second.transform(X))


def test_verbose_shows_the_download_progress(online, fake_hub):
    calls, _ = fake_hub
    load_backbone("resnet18", verbose=1)
    assert calls[0]["progress"] is True


def test_the_offline_switch_fetches_nothing(online, fake_hub, monkeypatch):
    calls, _ = fake_hub
    monkeypatch.setenv("SKTRANSFER_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("resnet18")
    assert calls == []
    message = str(info.value)
    assert RESNET18_FILE in message and str(online / "torch" / "hub" / "checkpoints") in message
    assert "SKTRANSFER_OFFLINE" in message and "weights=None" in message


def test_a_failing_download_raises_the_clear_error_with_its_cause(online, monkeypatch):
    def no_network(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("resnet18")
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    message = str(info.value)
    assert "name resolution" in message and RESNET18_FILE in message
    assert str(online / "torch" / "hub" / "checkpoints") in message and "SKTRANSFER_OFFLINE=1" in message
    assert not (online / "torch" / "hub" / "checkpoints" / RESNET18_FILE).exists()


def test_a_silent_server_times_out_instead_of_hanging(online, monkeypatch):
    """A server on 127.0.0.1 that accepts the connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True)
    thread.start()
    real = torch.hub.download_url_to_file

    def to_local_server(url, dst, hash_prefix=None, progress=True):
        return real(f"http://127.0.0.1:{port}/{RESNET18_FILE}", dst, hash_prefix, progress=progress)

    monkeypatch.setattr(torch.hub, "download_url_to_file", to_local_server)
    monkeypatch.setenv("SKTRANSFER_DOWNLOAD_TIMEOUT", "1")
    start = time.perf_counter()
    socket.setdefaulttimeout(123.0)
    try:
        with pytest.raises(WeightsNotFoundError, match="timed out") as info:
            load_backbone("resnet18")
        assert socket.getdefaulttimeout() == 123.0  # the process's default is restored
    finally:
        socket.setdefaulttimeout(None)
        server.close()
    assert time.perf_counter() - start < 10
    assert info.value.__cause__ is not None
    monkeypatch.setenv("SKTRANSFER_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="SKTRANSFER_DOWNLOAD_TIMEOUT='soon'"):
        load_backbone("resnet18")


def test_timm_names_download_through_huggingface_hub(online, monkeypatch):
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False).state_dict()
    calls = []

    def hf_hub_download(repo_id, filename, cache_dir=None, **kwargs):
        calls.append((repo_id, filename, cache_dir))
        # the layout huggingface_hub writes, so that the cache lookup finds it next time
        repo = online / "hf" / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("abc")
        (repo / "snapshots" / "abc").mkdir(parents=True)
        path = repo / "snapshots" / "abc" / filename
        save_file({k: v.contiguous() for k, v in source.items()}, str(path))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    backbone = load_backbone("timm/resnet18.a1_in1k")
    assert calls == [("timm/resnet18.a1_in1k", "model.safetensors", str(online / "hf"))]
    for name, tensor in backbone.model.state_dict().items():
        if name in source:
            assert torch.equal(tensor, source[name])
    load_backbone("timm/resnet18.a1_in1k")
    assert len(calls) == 1  # the second load reads the Hugging Face cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE is set"):
        load_backbone("timm/resnet34.a1_in1k")
    assert len(calls) == 1


def test_a_hub_that_cannot_be_reached_is_asked_once(online, monkeypatch):
    """No connection (LocalEntryNotFoundError) is not a missing file: the second file name is not tried."""
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    calls = []

    def unreachable(repo_id, filename, **kwargs):
        calls.append((filename, kwargs.get("etag_timeout")))
        raise LocalEntryNotFoundError("Connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setenv("SKTRANSFER_DOWNLOAD_TIMEOUT", "7")
    with pytest.raises(WeightsNotFoundError, match="Connection refused") as info:
        load_backbone("timm/resnet18.a1_in1k")
    assert calls == [("model.safetensors", 7.0)]
    assert isinstance(info.value.__cause__, LocalEntryNotFoundError)


def test_the_embedded_default_needs_no_network(empty_caches, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the embedded weights must not be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.delenv("SKTRANSFER_OFFLINE", raising=False)
    assert load_backbone().weights.startswith("ImageNet-1k")
