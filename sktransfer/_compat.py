"""Loading what earlier versions wrote: parameters they lacked, and modules that moved.

* Estimators pickled or saved before a parameter existed get the value that
  reproduces their behaviour (``EARLIER_BEHAVIOUR``, ``EARLIER_FITTED``), through
  the fine-tuning estimators' ``__setstate__`` (``EarlierStateMixin``).
* Pickles name classes by module. 0.1 kept every module at the top of the
  package (``sktransfer._network.TransferNet``...); 0.2 moved them into
  subpackages. ``install_module_aliases`` (run by ``import sktransfer``) maps
  the old module names to the new ones, so those pickles still load. The
  aliases stay for one release (removed in 0.3).
"""

from __future__ import annotations

import importlib
import sys

import numpy as np

# values of parameters added in 0.2 that reproduce what estimators did before them
EARLIER_BEHAVIOUR = {"layer": None, "head_init": "random", "min_steps": 0, "bn_stats": "update",
                     "head_hidden": None}
EARLIER_CLASSIFIER = {"adaptation": None, "adaptation_weight": 1.0, "teacher": None, "distill_temperature": 4.0,
                      "distill_weight": 0.5, "probe_ensemble": False, "mixup": 0.0,
                      "test_time_augment": 0}
EARLIER_FITTED = {"layer_": "embedding", "bn_stats_": "update"}

# module of 0.1 -> where its picklable classes live now
MOVED_MODULES = {
    "_augment": "data._augment",
    "_backbones": "backbones._backbone",
    "_layers": "backbones._fast_layers",
    "_network": "training._network",
    "_preprocessing": "data._preprocessing",
}


def earlier_finetune_state(state):
    """A fine-tuning estimator's pickled state, completed with what earlier versions lacked."""
    state = dict(state)
    for name, value in EARLIER_BEHAVIOUR.items():
        state.setdefault(name, value)
    if "missing_label" in state:  # a classifier
        for name, value in EARLIER_CLASSIFIER.items():
            state.setdefault(name, value)
    if "net_" in state:
        if "missing_label" in state:
            state.setdefault("probe_net_", None)
            state.setdefault("mixup_", 0.0)
            state.setdefault("test_time_augment_", 0)
            state.setdefault("test_time_views_", np.zeros((0, 2, 3), dtype=np.float32))
        for name, value in EARLIER_FITTED.items():
            state.setdefault(name, value)
        state.setdefault("head_init_", state["head_init"])  # before "auto", the setting itself
        if "backbone_lr_scale_" not in state:
            scale = state.get("backbone_lr_scale", 1.0)
            state["backbone_lr_scale_"] = 1.0 if isinstance(scale, str) else float(scale)
    return state


class EarlierStateMixin:
    """Unpickling (and loading) completes the state of an estimator written before a parameter
    existed, so that it keeps the behaviour it was fitted with (:func:`earlier_finetune_state`)."""

    def __setstate__(self, state):
        super().__setstate__(earlier_finetune_state(state))


def install_module_aliases(package="sktransfer"):
    """Make ``sktransfer.<old module>`` importable (for unpickling) as the module it became."""
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(f"{package}.{old}", importlib.import_module(f"{package}.{new}"))
