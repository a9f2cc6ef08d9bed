"""Small stand-ins for the Trainer's tests: a one-convolution backbone and indexed images."""

import numpy as np
import torch


class TinyConv(torch.nn.Module):
    def __init__(self, channels=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3)

    def forward(self, x):
        return self.conv(x)


def two_class_loss(out, target, weight):
    """The task loss of :func:`tiny_trainer`'s two classes."""
    from sktransfer.training._objectives import classification_loss

    return classification_loss(out, target, weight, [2], np.ones(1))


def tiny_trainer(settings, loss=two_class_loss):
    """``(trainer, net, history)``: a Trainer of a :class:`TinyConv` network (torch seed 0) on 12
    random 10x10 images of two alternating classes, unit weights, on the CPU."""
    from sktransfer import load_backbone
    from sktransfer.training._network import TransferNet
    from sktransfer.training._objectives import classification_score
    from sktransfer.training._trainer import Trainer

    torch.manual_seed(0)
    net = TransferNet(load_backbone(TinyConv()), 8, 2, pooling="avg")
    x = torch.randn(12, 3, 10, 10)
    y, w = np.array([0, 1] * 6), np.ones(12, dtype=np.float32)

    def score(out, target, weight):
        return classification_score(out, target, weight, [2])

    history = []
    trainer = Trainer(net, IndexedImages(x), y, w, loss, score, settings, torch.device("cpu"),
                      np.random.RandomState(0), history)
    return trainer, net, history


def large_output_linear():
    """A ``Linear(4, 2)`` whose outputs are about 4e5 for inputs of 100: beyond float16 (65504),
    well within float32."""
    net = torch.nn.Linear(4, 2)
    with torch.no_grad():
        net.weight.fill_(1e3)
        net.bias.zero_()
    return net


class IndexedImages:
    """Prepared images served by index, as ``PreparedImages`` serves them."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def batch(self, indices):
        return self.x[torch.as_tensor(np.asarray(indices))]


def patched_grad_scalers(monkeypatch, make):
    """The trainer's gradient scaler (fp16 autocast, V100 and T4) made by ``make()`` instead;
    returns the list of those made, in order."""
    import sktransfer.training._trainer as trainer_module

    made = []
    monkeypatch.setattr(trainer_module, "grad_scaler", lambda device: made.append(make()) or made[-1])
    return made


def real_cpu_grad_scalers(monkeypatch, **options):
    """:func:`patched_grad_scalers` with real torch ``GradScaler`` s on the CPU, made with
    ``options``. Skips before torch 2.3."""
    import pytest

    scaler_class = getattr(torch.amp, "GradScaler", None)
    if scaler_class is None:
        pytest.skip("torch.amp.GradScaler: torch 2.3 and later")
    return patched_grad_scalers(monkeypatch, lambda: scaler_class("cpu", **options))
