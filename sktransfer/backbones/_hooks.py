"""The one forward-hook helper: record what named modules see during a forward pass."""

from __future__ import annotations


class _Stop(Exception):
    """Raised from a hook to end a forward pass early, once every output is recorded."""


def record(run, modules, *, inputs=False, stop_when_done=False):
    """Call ``run()`` with hooks on ``modules`` (``{label: nn.Module}``).

    Returns the list of ``(label, value)`` in call order, where ``value`` is the
    module's first input (``inputs=True``) or its output. A module called twice
    appears twice. ``stop_when_done=True`` aborts the forward pass as soon as
    every module has been seen once (the rest of the network does not run).
    """
    events = []
    pending = set(modules)

    def hook_for(label):
        def hook(_module, args, output=None):
            events.append((label, args[0] if inputs else output))
            pending.discard(label)
            if stop_when_done and not pending:
                raise _Stop

        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(label)) if inputs
        else module.register_forward_hook(hook_for(label))
        for label, module in modules.items()
    ]
    try:
        run()
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return events
