"""Freed memory kept in the process while sktransfer runs networks (glibc only)."""

import ctypes

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
BIG = 64 << 20  # above glibc's largest mmap threshold (32 MiB): mmapped unless mmap is off


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mmapped_bytes():
    lib = _allocator.glibc()
    if not hasattr(lib, "mallinfo2"):  # glibc < 2.33
        pytest.skip("mallinfo2 needs glibc 2.33")
    lib.mallinfo2.restype = _MallInfo2
    return lib.mallinfo2().hblkhd


def _mmapped_by_big_tensor():
    before = _mmapped_bytes()
    x = torch.empty(BIG, dtype=torch.uint8)
    grown = _mmapped_bytes() - before
    del x
    return grown >= BIG


@glibc_only
def test_large_blocks_stay_off_mmap_inside_the_scope_only(monkeypatch):
    monkeypatch.delenv("SKTRANSFER_TUNE_MALLOC", raising=False)
    assert _mmapped_by_big_tensor()
    with keep_freed_memory():
        assert not _mmapped_by_big_tensor()
        with keep_freed_memory():  # nested: the inner exit leaves the outer scope in place
            pass
        assert not _mmapped_by_big_tensor()
    assert _allocator._depth == 0
    assert _mmapped_by_big_tensor()


@glibc_only
def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("SKTRANSFER_TUNE_MALLOC", "0")
    assert not _allocator.enabled()
    with keep_freed_memory():
        assert _allocator._depth == 0
        assert _mmapped_by_big_tensor()


def test_does_nothing_without_glibc(monkeypatch):
    monkeypatch.setattr(_allocator, "_libc", False)
    assert _allocator.glibc() is None and not _allocator.enabled()
    with keep_freed_memory():
        assert _allocator._depth == 0


@glibc_only
def test_inference_and_training_run_inside_the_scope(monkeypatch):
    monkeypatch.delenv("SKTRANSFER_TUNE_MALLOC", raising=False)
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
    assert len(depths) == 3 and all(d >= 1 for d in depths)  # one batch of inference, two steps
    assert _allocator._depth == 0
