"""Freed memory kept in the process while sktransfer runs networks (glibc only)."""

import os
import threading

import numpy as np
import pytest
import torch
from _tiny import IndexedImages, TinyConv

from sktransfer import _allocator, load_backbone
from sktransfer._allocator import keep_freed_memory
from sktransfer._inference import run_batches
from sktransfer.training._network import TransferNet
from sktransfer.training._objectives import classification_loss, classification_score
from sktransfer.training._trainer import Phase, Trainer, TrainSettings

glibc_only = pytest.mark.skipif(_allocator.glibc() is None, reason="glibc's allocator only")
BIG = 48 << 20  # above glibc's largest mmap threshold (32 MiB): mapped unless mmap is off


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch):
    for name in ("SKTRANSFER_TUNE_MALLOC", "GLIBC_TUNABLES", *_allocator.USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)


def _mmapped_bytes():
    lib = _allocator.glibc()
    if not hasattr(lib, "mallinfo2"):  # glibc < 2.33
        pytest.skip("mallinfo2 needs glibc 2.33")
    return lib.mallinfo2().hblkhd


def _mmapped_by_big_tensor():
    """Whether a block above the mmap threshold, larger than the heap's free memory (which
    malloc would reuse first), is mapped. Called from the main thread (the main arena)."""
    before = _mmapped_bytes()
    size = max(BIG, _allocator.glibc().mallinfo2().fordblks + (16 << 20))
    x = torch.empty(size, dtype=torch.uint8)
    grown = _mmapped_bytes() - before
    del x
    return grown >= size


@glibc_only
def test_large_blocks_stay_off_mmap_inside_the_scope_only():
    assert _mmapped_by_big_tensor()
    with keep_freed_memory():
        assert not _mmapped_by_big_tensor()
        with keep_freed_memory():  # nested: the inner exit leaves the outer scope in place
            pass
        assert not _mmapped_by_big_tensor()
    assert _allocator._depth == 0
    assert _mmapped_by_big_tensor()


@glibc_only
@pytest.mark.parametrize("name, value", [("SKTRANSFER_TUNE_MALLOC", "0"), ("MALLOC_TRIM_THRESHOLD_", "100000"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")])
def test_the_switch_and_the_users_own_settings_turn_it_off(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert not _allocator.enabled()
    with keep_freed_memory():
        assert _allocator._depth == 0
        assert _mmapped_by_big_tensor()


@glibc_only
def test_scopes_from_two_threads_and_an_exception_share_one_state():
    first_in, second_done = threading.Event(), threading.Event()
    seen = []

    def first():
        with keep_freed_memory():
            first_in.set()
            second_done.wait(10)
            seen.append(("first", _allocator._depth))

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with pytest.raises(RuntimeError):
        with keep_freed_memory():
            seen.append(("second", _allocator._depth))
            raise RuntimeError("boom")
    assert _allocator._depth == 1  # the other thread's scope is still open
    assert not _mmapped_by_big_tensor()
    second_done.set()
    thread.join()
    assert seen == [("second", 2), ("first", 1)] and _allocator._depth == 0
    assert _mmapped_by_big_tensor()


@glibc_only
@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_inside_a_scope_starts_outside_it():
    read, write = os.pipe()
    with keep_freed_memory():
        pid = os.fork()
        if pid == 0:  # the child: report its depth and whether a big block is mapped again
            try:
                os.write(write, f"{_allocator._depth} {int(_mmapped_by_big_tensor())}".encode())
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    assert os.read(read, 100).decode() == "0 1"
    os.close(read)
    os.close(write)


@pytest.mark.parametrize("error", [OSError, TypeError])  # no libc.so.6 (macOS, musl); CDLL(None) on Windows
def test_does_nothing_without_glibc(monkeypatch, error):
    def cdll(name, *args, **kwargs):
        raise error(name)

    monkeypatch.setattr(_allocator, "_libc", None)
    monkeypatch.setattr(_allocator.ctypes, "CDLL", cdll)
    assert _allocator.glibc() is None and not _allocator.enabled()
    with keep_freed_memory():
        assert _allocator._depth == 0


@glibc_only
def test_inference_and_training_run_inside_the_scope():
    depths = []

    def fn(x):
        depths.append(_allocator._depth)
        return x.flatten(1)

    run_batches(fn, [(0, 2, torch.zeros(2, 3))], torch.device("cpu"), lambda *a: None)

    torch.manual_seed(0)
    net = TransferNet(load_backbone(TinyConv()), 8, 2, pooling="avg")

    class DepthTerm:  # a loss term that records the scope's depth at every step
        def __call__(self, step):
            depths.append(_allocator._depth)
            return torch.zeros(())

        def value(self):
            return 0.0

    settings = TrainSettings(lr=0.05, batch_size=4, lr_schedule="constant", loss_terms=[lambda net: DepthTerm()])
    trainer = Trainer(
        net, IndexedImages(torch.randn(8, 3, 10, 10)), np.array([0, 1] * 4), np.ones(8, dtype=np.float32),
        lambda out, t, w: classification_loss(out, t, w, [2], np.ones(1)),
        lambda out, t, w: classification_score(out, t, w, [2]),
        settings, torch.device("cpu"), np.random.RandomState(0), [],
    )
    assert trainer.fit([Phase("fine_tune", 0, 1)], np.arange(8))
    assert len(depths) >= 3 and all(d >= 1 for d in depths)  # one batch of inference, then the steps
    assert _allocator._depth == 0
