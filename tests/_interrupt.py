"""A training run killed at a given epoch, as a crash or a killed job would stop it."""


class Killed(Exception):
    pass


def kill_at(monkeypatch, epoch):
    """Raise :class:`Killed` as ``Trainer._epoch`` is called for the ``epoch``-th time (counting
    from 1, over every fit while patched). Returns the list that gets one item per call."""
    from sktransfer.training._trainer import Trainer

    original = Trainer._epoch
    calls = []

    def run_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == epoch:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(Trainer, "_epoch", run_epoch)
    return calls
