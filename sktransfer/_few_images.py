"""The few-image settings of a fit: ``bn_stats_``, ``head_init_`` and ``backbone_lr_scale_``.

Each ``"auto"`` parameter is resolved once training's size is known (``training/_freezing.py``,
``training/_head_init.py`` hold the rules); the classifier's mixins add ``mixup_``
(``_mixing.py``), the probe's head (``_probe_ensemble.py``) and ``test_time_augment_``
(``_test_time.py``) through ``super()``.
"""

from __future__ import annotations

from .training._freezing import resolve_backbone_lr_scale, resolve_bn_stats, shallow_network
from .training._head_init import resolve_head_init


class FewImageSettingsMixin:
    """For :class:`~sktransfer._finetune.BaseFineTune`: needs ``net_``, ``n_frozen_stages_``,
    ``preprocessing_`` and the ``_feature_side`` recorded by ``_build``."""

    def _resolve_few_image_settings(self, n_train, start):
        """``bn_stats_``, ``backbone_lr_scale_`` and, for a fit from the pretrained network (``start``),
        ``head_init_``, for a training set of ``n_train`` images."""
        self.bn_stats_ = resolve_bn_stats(self.bn_stats, n_train, self.batch_size)
        if start:  # training that goes on keeps the head_init_ of the fit that started it
            all_frozen = self.n_frozen_stages_ == len(self.net_.backbone.stages)
            self.head_init_ = resolve_head_init(self.head_init, self.bn_stats_, all_frozen)
        self.backbone_lr_scale_ = resolve_backbone_lr_scale(
            self.backbone_lr_scale, n_train, self.batch_size, self._shallow_network())

    def _shallow_network(self):
        """Whether the network trained ends at a map of stride 8 or less (``shallow_network``); a
        model fitted before ``_feature_side`` was kept is judged by its image size."""
        return shallow_network(self.preprocessing_.image_size, getattr(self, "_feature_side", None),
                               getattr(self, "_native_size", None))
