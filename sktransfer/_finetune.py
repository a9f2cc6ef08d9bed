"""BaseFineTune: the scikit-learn side of FineTuneClassifier and FineTuneRegressor.

It checks parameters and inputs, builds the network (``_build``), and hands the
loop to a :class:`~sktransfer.training._trainer.Trainer`. Subclasses supply the
targets: how ``y`` is checked and encoded, the number of head outputs, the loss,
the validation score and the solved head ("target hooks").
"""

from __future__ import annotations

import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted
from torch import nn

from ._compat import EarlierStateMixin
from ._device import carry_state, cpu_copy, cpu_state, resolve_device, state_elsewhere
from ._distillation import DistillationMixin
from ._docstrings import DOCS_URL
from ._domain import AdaptationMixin, with_unlabelled
from ._few_images import FewImageSettingsMixin
from ._fitting import fit_scope, seeded
from ._inference import predict_batch_size, predict_images
from ._persistence import SaveMixin
from ._targets import check_y, target_rows, task_weight_array
from ._validation import Device, Number, Pattern, PixelRange
from .backbones._cut import AUTO, EMBEDDING, cut_at_layer, map_side, probing
from .backbones._loading import load_backbone
from .backbones._pooling import POOLINGS, pool
from .data._augment import resolve_augment
from .data._batches import PreparedImages, resolve_num_workers
from .data._preprocessing import Preprocessing, prepare_batch
from .data._sources import as_images, learn_pixel_range
from .training._checkpoint import Checkpointer, run_digest
from .training._freezing import BN_STATS, check_freeze_depth
from .training._fusion import interpolate
from .training._head_init import HEAD_INITS, start_head
from .training._network import TransferNet, hidden_sizes
from .training._optim import OPTIMIZERS, SCHEDULES
from .training._penalties import REGULARIZATIONS, WeightPenalty
from .training._trainer import Phase, Trainer, TrainSettings

_POSITIVE_INT = Number(Integral, 1, None, closed="left")
_NON_NEGATIVE_INT = Number(Integral, 0, None, closed="left")
_NON_NEGATIVE = Number(Real, 0, None, closed="left")

# the parameters shared by FineTuneClassifier and FineTuneRegressor, checked at fit
FINETUNE_CONSTRAINTS = {
    "backbone": [str, nn.Module, HasMethods(["export_backbone"])],
    "weights": [str, os.PathLike, None],
    "freeze_depth": [_NON_NEGATIVE_INT, StrOptions({"all"})],
    "reg_lambda": [_NON_NEGATIVE],
    "regularization": [StrOptions(set(REGULARIZATIONS))],
    "max_epochs": [_POSITIVE_INT],
    "batch_size": [_POSITIVE_INT],
    "lr": [Number(Real, 0, None, closed="neither")],
    "optimizer": [StrOptions(set(OPTIMIZERS))],
    "lr_schedule": [StrOptions(set(SCHEDULES)), callable],
    "backbone_lr_scale": [_NON_NEGATIVE, StrOptions({"auto"})],
    "layer_decay": [Number(Real, 0, 1, closed="right"), None],
    "weight_decay": [_NON_NEGATIVE],
    "dropout": [Number(Real, 0, 1, closed="left")],
    "pooling": [StrOptions({p for p in POOLINGS if p is not None}), None],
    "layer": [StrOptions({AUTO, EMBEDDING}), Pattern(r"stage\d+", "'stageK' (the backbone cut after stage K)"),
              None],
    "head_init": [StrOptions(set(HEAD_INITS))],
    "head_hidden": ["array-like", _POSITIVE_INT, None],
    "min_steps": [StrOptions({"auto"}), _NON_NEGATIVE_INT],
    "bn_stats": [StrOptions(set(BN_STATS))],
    "augment": [StrOptions({"default", "flip"}), "boolean", callable, None],
    "early_stopping": ["boolean"],
    "validation_fraction": [Number(Real, 0, 1, closed="neither")],
    "n_iter_no_change": [_POSITIVE_INT],
    "linear_probe_epochs": [_NON_NEGATIVE_INT],
    "fusion_alpha": [Number(Real, 0, 1, closed="both")],
    "task_weights": ["array-like", None],
    "image_size": [_POSITIVE_INT, None],
    "input_shape": [tuple, list, np.ndarray, None],
    "pixel_range": [StrOptions({"auto"}), PixelRange()],
    "preprocessing": [dict, Preprocessing, None],
    "device": [StrOptions({"auto"}), Device()],
    "num_workers": [StrOptions({"auto"}), _NON_NEGATIVE_INT],
    "checkpoint_dir": [str, os.PathLike, None],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
}


def _kept_optimizer(estimator, trainer):
    """The optimizer ``partial_fit`` keeps from call to call, and ``trainer``'s gradient scaler
    (fp16 autocast) and count of overflowed steps: those kept with it (the scale has settled;
    overflows in a row add up across calls). When ``device`` changed since the last call, a new
    optimizer for the network's device takes over the old one's state."""
    kept = getattr(estimator, "_partial_optimizer", None)
    if kept is None or state_elsewhere(kept):
        trainer.freeze(estimator.n_frozen_stages_)
        fresh = trainer.optimizer()
        estimator._partial_optimizer = fresh if kept is None else carry_state(kept, fresh)
        estimator._partial_scaler, estimator._partial_overflows = trainer.scaler, trainer.overflows
    elif trainer.scaler is not None and getattr(estimator, "_partial_scaler", None) is not None:
        trainer.scaler = estimator._partial_scaler
        trainer.overflows = getattr(estimator, "_partial_overflows", trainer.overflows)
    return estimator._partial_optimizer


# what an estimator holds beside its fitted attributes and does not pickle: the pretrained weights (reloaded
# when needed), partial_fit's optimizer, gradient scaler and overflow count (new ones after loading), and what
# a fit holds while it runs
_NOT_PICKLED = ("_pretrained", "_partial_optimizer", "_partial_scaler", "_partial_overflows", "_best", "_teacher_proba")


class BaseFineTune(FewImageSettingsMixin, AdaptationMixin, DistillationMixin, SaveMixin, EarlierStateMixin,
                   BaseEstimator, register=False):
    """Fine-tuning shared by :class:`FineTuneClassifier` and :class:`FineTuneRegressor`."""

    _parameter_constraints: dict = FINETUNE_CONSTRAINTS

    def __init__(self, *, backbone, weights, freeze_depth, reg_lambda, regularization, max_epochs, batch_size,
                 lr, optimizer, lr_schedule, backbone_lr_scale, layer_decay, weight_decay, dropout, pooling,
                 layer, head_init, head_hidden, min_steps, bn_stats, augment, early_stopping, validation_fraction,
                 n_iter_no_change, linear_probe_epochs, fusion_alpha, task_weights, image_size, input_shape,
                 pixel_range, preprocessing, device, num_workers, checkpoint_dir, random_state, verbose,
                 warm_start):
        # no defaults here: each estimator's own signature states them (and get_params reads it)
        self.backbone = backbone
        self.weights = weights
        self.freeze_depth = freeze_depth
        self.reg_lambda = reg_lambda
        self.regularization = regularization
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.backbone_lr_scale = backbone_lr_scale
        self.layer_decay = layer_decay
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.pooling = pooling
        self.layer = layer
        self.head_init = head_init
        self.head_hidden = head_hidden
        self.min_steps = min_steps
        self.bn_stats = bn_stats
        self.augment = augment
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.linear_probe_epochs = linear_probe_epochs
        self.fusion_alpha = fusion_alpha
        self.task_weights = task_weights
        self.image_size = image_size
        self.input_shape = input_shape
        self.pixel_range = pixel_range
        self.preprocessing = preprocessing
        self.device = device
        self.num_workers = num_workers
        self.checkpoint_dir = checkpoint_dir
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------------ checks
    def _check_y(self, y, n_samples):
        return check_y(y, n_samples, type(self).__name__, self._target_noun)

    def _task_weights(self, n_tasks):
        return task_weight_array(self.task_weights, n_tasks)

    def _sample_weights(self, y, sample_weight, n):
        w = _check_sample_weight(sample_weight, np.empty((n, 0)), dtype=np.float64)
        return w.astype(np.float32)

    def _training_inputs(self, X, y, sample_weight, first, learn, sample_domain=None):
        """What ``fit`` and ``partial_fit`` start with: ``(source, y, y_enc, w)``, ``y`` checked.

        ``first``: this call learns the targets (``learn(y)`` returns them
        encoded) and the pixel range; otherwise they are encoded as learned.
        Rows of a target domain (``sample_domain < 0``) are encoded as unlabelled.
        """
        source = as_images(X, self, input_shape=self.input_shape, reset=first)
        y = self._check_y(y, len(source))
        if len(source) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 samples to train (BatchNorm layers in training "
                f"mode cannot normalise a batch of one); got {len(source)} sample."
            )
        target = target_rows(sample_domain, len(source))
        known = y if target is None else y[~target]
        if first:
            y_enc = learn(known)
            self.pixel_range_ = learn_pixel_range(source, self.pixel_range)
            self.history_ = []
        else:
            y_enc = self._encode(known)
        self._task_weights(self.n_outputs_)
        source.pixel_range = self.pixel_range_
        w = _check_sample_weight(sample_weight, np.empty((len(source), 0)), dtype=np.float64, copy=True)
        if target is None:
            return source, y, y_enc, self._sample_weights(y, w, len(source))
        w[~target] = self._sample_weights(known, w[~target], len(known))
        return source, y, with_unlabelled(y_enc, target), w.astype(np.float32)

    # ---------------------------------------------------------------- fitting
    def _fit(self, X, y, sample_weight, sample_domain=None):
        """Fine-tune on ``(X, y)`` (see the subclasses' ``fit``)."""
        continuing = self.warm_start and hasattr(self, "net_")
        source, y, y_enc, w = self._training_inputs(X, y, sample_weight, not continuing, self._learn_targets,
                                                    sample_domain)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        device = resolve_device(self.device)
        checkpointer = resume = None
        with self._teaching(X, len(source)) as soft, fit_scope(self, not continuing):
            if self.checkpoint_dir is not None:  # loaded before seeding: rebuilding its network draws numbers
                checkpointer = Checkpointer(self.checkpoint_dir, run_digest(self, source, y, w, sample_domain, soft))
                if self.warm_start and not continuing:
                    resume = checkpointer.load()
            with seeded(seed, device):
                if resume is not None:
                    self._adopt(resume.estimator)
                elif not continuing:
                    self._build(device)
                self.net_.to(device)
                self._train(source, y_enc, w, rng, device, checkpointer, resume,
                            init_head=resume is None and not continuing)
        return self

    def _adopt(self, fitted):
        """Take the fitted attributes of a checkpoint's estimator."""
        self.__dict__.pop("_feature_side", None)  # a checkpoint from before it was kept has none
        for key, value in vars(fitted).items():
            if (key.endswith("_") and not key.startswith("_")) or key in ("_native_size", "_feature_side"):
                setattr(self, key, value)
        self._pretrained = None
        self._partial_optimizer = None

    def _partial_fit(self, X, y, sample_weight, learn):
        """One epoch on ``(X, y)``; ``learn(y)`` sets up the targets on the first call."""
        first = not hasattr(self, "net_")

        def learn_and_encode(y):
            learn(y)
            return self._encode(y)

        source, _, y_enc, w = self._training_inputs(X, y, sample_weight, first, learn_and_encode)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max)) + len(self.history_)
        rng = np.random.RandomState(seed)
        device = resolve_device(self.device)
        with self._teaching(X, len(source)), seeded(seed, device), fit_scope(self, first):
            if first:
                self._build(device)
            self.net_.to(device)
            data = self._prepared(source, device)
            labelled, unlabelled = self._fit_rows(y_enc, None, labelled_only=True)[::2]
            everything = self._distill_rows(labelled, unlabelled)
            self._start_point(None)
            if first:
                self._resolve_few_image_settings(len(everything), start=True)
                start_head(self.head_init_, self.net_, data, labelled, y_enc, w, device, self.batch_size,
                           self._solved_head)
            trainer = self._trainer(data, y_enc, w, rng, device, augment=resolve_augment(self.augment))
            optimizer = _kept_optimizer(self, trainer)
            trainer.run_epochs(optimizer, None, trainer.loss_terms(), 1, "partial_fit", everything)
        self.n_epochs_ = len(self.history_)
        self.best_epoch_ = None
        self.net_.eval()
        return self

    def _build(self, device):
        """``net_``: the backbone (cut at ``layer``), pooling, dropout and a new head."""
        backbone = load_backbone(self.backbone, self.weights, self.preprocessing, self.verbose)
        self._native_size = backbone.preprocessing.image_size
        self.preprocessing_ = backbone.preprocessing.replace(image_size=self.image_size)
        size = self.preprocessing_.image_size
        backbone, self.layer_ = cut_at_layer(backbone, self.layer, size)
        self.n_frozen_stages_ = check_freeze_depth(self.freeze_depth, len(backbone.stages))
        # the pretrained weights are kept during fit only when L2-SP or fusion needs them
        self._pretrained = _state_copy(backbone.model) if self._needs_anchor() else None
        backbone.eval()
        with torch.inference_mode(), probing(backbone, size):
            probe = prepare_batch(torch.zeros(1, 3, size, size), self.preprocessing_, torch.device("cpu"))
            features = backbone.forward_features(probe)
            n_features = pool(features, self.pooling).shape[1]
        self._feature_side = map_side(features)  # where the network ends: see _few_images.py
        net = TransferNet(backbone, n_features, self._n_head_outputs(), self.pooling, self.dropout,
                          hidden_sizes(self.head_hidden))
        self.net_ = net.to(device)
        self._partial_optimizer = None

    def _prepared(self, source, device):
        workers = resolve_num_workers(self.num_workers, source, self.batch_size)
        # channels_last on the CPU too: training steps measured 1.2x faster (docs/benchmarks.md)
        return PreparedImages(source, self.preprocessing_, device, True, workers)

    def _uses_l2sp(self):
        return self.reg_lambda > 0 and self.regularization == "l2sp"

    def _needs_anchor(self):
        return self._uses_l2sp() or self.fusion_alpha < 1.0

    def _anchor_state(self):
        """Pretrained backbone weights (reloaded after unpickling; never pickled)."""
        if getattr(self, "_pretrained", None) is None:
            self._pretrained = _state_copy(load_backbone(self.backbone, self.weights, self.preprocessing).model)
        return self._pretrained

    def _loss_terms(self, adapting=False, y_enc=None, w=None):
        """Factories of the loss terms added to the task loss (weight penalty, adaptation)."""
        adaptation = self._adaptation_terms(y_enc, w) if adapting else []
        if self.reg_lambda == 0:
            return adaptation
        anchor = self._anchor_state() if self._uses_l2sp() else None
        return [lambda net: WeightPenalty(net, self.reg_lambda, self.regularization, anchor), *adaptation]

    def _trainer(self, data, y_enc, w, rng, device, augment, adapting=False):
        settings = TrainSettings(
            optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
            backbone_lr_scale=self.backbone_lr_scale_, layer_decay=self.layer_decay,
            lr_schedule=self.lr_schedule, batch_size=self.batch_size, augment=augment,
            mixup=getattr(self, "mixup_", 0.0), bn_stats=self.bn_stats_, n_iter_no_change=self.n_iter_no_change,
            verbose=self.verbose, loss_terms=self._loss_terms(adapting, y_enc, w) + self._distill_terms(w, device),
            task_weight=self._task_loss_weight(),
        )
        return Trainer(self.net_, data, y_enc, w, self._loss, self._score, settings, device, rng, self.history_)

    def _train(self, source, y_enc, w, rng, device, checkpointer=None, resume=None, init_head=False):
        labelled_idx, valid_idx, target_idx = self._fit_rows(y_enc, rng, resume)
        train_idx = self._distill_rows(labelled_idx, target_idx)  # with a teacher, the unlabelled rows too
        data = self._prepared(source, device)
        self._resolve_few_image_settings(len(train_idx), start=init_head)
        if init_head:  # the new head's start: solved, zero or as built (head_init_)
            start_head(self.head_init_, self.net_, data, labelled_idx, y_enc, w, device, self.batch_size,
                       self._solved_head)
        self._start_point(len(train_idx) if init_head else None)
        target_batches = self._target_batches(target_idx)
        trainer = self._trainer(data, y_enc, w, rng, device, resolve_augment(self.augment), len(target_batches))
        trainer.target_idx = target_batches
        phases = []
        if self.linear_probe_epochs:
            phases.append(Phase("linear_probe", len(self.net_.backbone.stages), self.linear_probe_epochs))
        epochs = self._fine_tune_epochs(len(train_idx), adapting=len(target_batches) > 0)
        phases.append(Phase("fine_tune", self.n_frozen_stages_, epochs))
        on_epoch = None
        if checkpointer is not None:
            def on_epoch(**state):
                checkpointer.save(self, rng=rng, device=device, best=trainer.best, train_idx=train_idx,
                                  valid_idx=valid_idx, **state)
        finished = trainer.fit(phases, train_idx, valid_idx, resume=resume, on_epoch=on_epoch)
        self.best_epoch_ = trainer.restore_best()
        if self.fusion_alpha < 1.0:
            interpolate(self.net_.backbone.model, self._anchor_state(), self.fusion_alpha)
        self._adapt_statistics(data, target_idx, labelled_idx, device)
        self.n_epochs_ = len(self.history_)
        self.net_.eval()
        if checkpointer is not None and finished:
            checkpointer.finish(self)

    # ------------------------------------------------------------- predicting
    def _logits(self, X, net=None):
        check_is_fitted(self, "net_")
        source = as_images(X, self, input_shape=self.input_shape, pixel_range=self.pixel_range_)
        device = resolve_device(self.device)
        batch_size = predict_batch_size(self.batch_size, device, self.preprocessing_.image_size, source.input_pixels)
        workers = resolve_num_workers(self.num_workers, source, batch_size)
        net = self._prediction_net() if net is None else net
        return predict_images(net, source, self.preprocessing_, device, batch_size, workers)

    def _prediction_net(self):
        """The module that predicts: ``net_``; the classifier's mixins wrap it (probe ensemble,
        test-time augmentation)."""
        return self.net_

    # --------------------------------------------------------------- transfer
    def export_backbone(self):
        """The fine-tuned backbone, ready to be the ``backbone`` of another estimator.

        Unlike the fitted estimator itself, the returned
        :class:`~sktransfer.Backbone` keeps its weights through ``clone`` (as in
        ``GridSearchCV``).

        Returns
        -------
        backbone : Backbone
        """
        check_is_fitted(self, "net_")
        backbone = cpu_copy(self.net_.backbone)
        backbone.preprocessing = self.preprocessing_
        backbone.weights = f"fine-tuned by {type(self).__name__}"
        return backbone.requires_grad_(True).eval()

    # ---------------------------------------------------------------- plumbing
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        # CUDA kernels are not bitwise repeatable; CPU fits are
        tags.non_deterministic = torch.cuda.is_available() and self.device != "cpu"
        return tags

    def __getstate__(self):
        state = cpu_state(super().__getstate__(), ["net_", "probe_net_"])
        for private in _NOT_PICKLED:
            state.pop(private, None)
        return state

    _doc_link_template = DOCS_URL
    _doc_link_module = "sktransfer"


def _state_copy(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
