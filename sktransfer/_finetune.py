"""The fine-tuning engine shared by FineTuneClassifier and FineTuneRegressor.

Subclasses supply the targets: how ``y`` is checked and encoded, the number of
head outputs, the loss and the validation score (hooks marked "target hooks").
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from ._augment import resolve_augment
from ._backbones import DEFAULT_BACKBONE, load_backbone
from ._checkpoint import Checkpointer, run_digest
from ._cut import AUTO, EMBEDDING, cut_backbone, resolve_layer, stage_index
from ._data import PreparedImages, precompute
from ._device import (
    cpu_copy,
    cpu_state,
    module_device,
    resolve_device,
)
from ._extraction import forward_batches
from ._extractor import DOCS_URL, check_positive_int
from ._freezing import (
    BN_STATS,
    check_freeze_depth,
    freeze,
    resolve_backbone_lr_scale,
    resolve_bn_stats,
)
from ._head_init import HEAD_INITS, set_head, standardise
from ._inputs import as_images, check_pixel_range, learn_pixel_range
from ._loader import check_num_workers, resolve_num_workers
from ._network import TransferNet
from ._persistence import SaveMixin
from ._pooling import check_pooling, pool
from ._prefix import frozen_prefix
from ._preprocessing import prepare_batch
from ._progress import progress_bar
from ._regularization import WeightPenalty, check_regularization
from ._training import (
    OPTIMIZERS,
    SCHEDULES,
    EpochTimer,
    current_lr,
    evaluate,
    make_optimizer,
    make_scheduler,
    run_epoch,
)

# values of parameters added in 0.2 that reproduce what estimators did before them
EARLIER_BEHAVIOUR = {"layer": None, "head_init": "random", "min_steps": 0, "bn_stats": "update"}
EARLIER_FITTED = {"layer_": "embedding", "bn_stats_": "update"}
# chosen from the learning curves of benchmarks/few_shot.py (docs/benchmarks.md)
DEFAULT_MIN_STEPS = 100

SHARED_PARAMETERS = """    backbone : str, torch.nn.Module, Backbone or fitted estimator, default="efficientnet_lite0"
        As for :class:`PretrainedFeatureExtractor`. A fitted
        sktransfer estimator (or ``est.export_backbone()``, which survives
        ``clone``) transfers a model trained on a source task.
    weights : "DEFAULT", str, path or None, default="DEFAULT"
        Pretrained weights; ``None`` trains from scratch.
    freeze_depth : int or "all", default=0
        Number of backbone stages, from the input, that stay frozen (no
        gradient, BatchNorm in eval mode). ``0`` trains everything; ``"all"``
        trains only the head (linear probe).
    reg_lambda : float, default=0.0
        Strength λ of the penalty ``λ/2 ||w - w_anchor||²`` on the backbone.
    regularization : {"l2sp", "l2"}, default="l2sp"
        Anchor of the penalty: the pretrained weights (L2-SP) or zero.
    max_epochs : int, default=10
        Fine-tuning epochs (after any linear-probe epochs).
    batch_size : int, default=32
    lr : float, default=2e-3
        Peak learning rate of the new head (and, times ``backbone_lr_scale``,
        of the backbone).
    optimizer : {"adamw", "adam", "sgd"}, default="adamw"
    lr_schedule : {"cosine", "constant", "linear", "onecycle"} or callable, default="cosine"
        Per-step schedule (cosine and linear start with a 10 % linear
        warm-up). A callable ``f(optimizer) -> scheduler`` is stepped per batch.
    backbone_lr_scale : float or "auto", default="auto"
        Backbone learning rate relative to ``lr`` (e.g. 0.1 for a gentler update
        of the pretrained weights). ``"auto"``: 0.3 when the training set holds
        fewer than 10 batches, else 1.0 (``backbone_lr_scale_`` tells which).
        With few images a full-rate backbone drifts from features on which the
        solved head was already good (photograph crops, 50 images at 64 px:
        0.77 at 1.0, 0.84 at 0.3); images far from ImageNet (digits) lost
        little at 0.3.
    layer_decay : float or None, default=None
        Layer-wise learning-rate decay: stage ``i`` of ``n`` gets an extra
        factor ``layer_decay ** (n - 1 - i)``.
    weight_decay : float, default=1e-4
        Optimizer weight decay of the new head.
    dropout : float, default=0.2 (classifier), 0.0 (regressor)
        Dropout before the new head. The regressor's head starts as a ridge
        regression solved without dropout, and dropout before a squared-error
        head only adds noise to its predictions in training (with 2 epochs,
        scikit-learn's ``check_regressors_train`` failed at 0.2 and passed at 0).
    pooling : str or None, default="avg"
        Pooling of the last feature map (see :class:`PretrainedFeatureExtractor`).
    layer : "auto", None or "stageK", default="auto"
        Where the backbone is cut: ``"stageK"`` keeps stages 0 ... K and
        drops the rest (their weights are not trained, stored or run), ``None``
        keeps the whole backbone. ``"auto"``: the whole backbone at its native
        size; on small inputs, whose last maps shrink to 2x2 or 1x1 pixels, the
        deepest stage whose map is still at least 4x4 (Lite0: ``"stage5"`` at
        64 px, ``"stage3"`` at 32 px), which measured better there and runs
        only the kept stages. ``layer_`` tells what was chosen; ``freeze_depth``
        counts the stages that are kept.
    head_init : {"solve", "random"}, default="solve"
        ``"solve"``: before training, the new head is set to a linear model
        solved on the frozen pretrained features of the training images
        (L2-penalised logistic regression for the classifier, ridge for the
        regressor, on standardised features), so that fine-tuning starts where
        a linear probe ends and the backbone receives no random gradients.
        ``"random"``: PyTorch's default initialisation.
    min_steps : int, default=%(min_steps)s
        Train for at least this many optimizer steps: ``max(max_epochs,
        ceil(min_steps / steps per epoch))`` epochs. Few images make short
        epochs (20 images at ``batch_size=32`` make one step); this gives them
        a useful budget, and does nothing once ``max_epochs`` epochs are longer.
        ``0``: exactly ``max_epochs`` epochs.
    bn_stats : {"auto", "pretrained", "update"}, default="auto"
        ``"pretrained"``: the backbone's BatchNorm layers normalise with their
        pretrained running statistics in training as in prediction (their
        scale and shift still train). ``"update"``: the trainable stages'
        BatchNorm layers use batch statistics and update their running
        averages (PyTorch's train mode; frozen stages never do). ``"auto"``:
        ``"pretrained"`` when the training set holds fewer than 10 batches,
        else ``"update"`` (``bn_stats_`` tells which). With few images the
        running averages are estimated from few, noisy batches and pull the
        features away from those the head was solved on; with many, adapting
        them to the new images measured better.
    augment : "default", "flip", bool or callable, default="default" (classifier), False (regressor)
        Training-batch augmentation. ``"default"`` (or ``True``) is
        :class:`RandomAffine` without flips: random resized crop (70-100 % of
        the area, aspect 3/4-4/3) and a small shear (up to 8 degrees).
        ``"flip"`` adds random horizontal flips, right for photographs but
        not for digits, text or anything whose mirror image means something
        else (hence not on by default). ``False`` turns augmentation off; a
        callable ``f(batch) -> batch`` receives normalised (N, 3, H, W)
        training batches. Never applied when predicting.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` (stratified), stop after
        ``n_iter_no_change`` epochs without a lower validation loss, and
        restore the best epoch's weights.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=3
    linear_probe_epochs : int, default=0
        Head-only epochs before unfreezing (LP-FT; Kumar et al., 2022).
    fusion_alpha : float, default=1.0
        After training the backbone becomes ``α θ_finetuned + (1-α) θ_pretrained``
        (weight-space fusion, WiSE-FT; Wortsman et al., 2022). ``1.0`` keeps the
        fine-tuned weights, ``0.0`` gives back the pretrained backbone.
    image_size, input_shape, pixel_range, preprocessing
        As for :class:`PretrainedFeatureExtractor`.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default="auto"
        ``"auto"``: CUDA with bf16 autocast and channels_last when present.
    num_workers : "auto" or int, default="auto"
        Worker processes decoding image files (see
        :class:`PretrainedFeatureExtractor`).
    checkpoint_dir : str, path or None, default=None
        Folder where every finished epoch rewrites a checkpoint of the run
        (safe format, see :meth:`save`): weights, optimizer moments, schedule
        position, random generators and early-stopping state. A fit with
        ``warm_start=True`` and the same parameters and data resumes an
        unfinished run from it exactly where it stopped (a killed process, a
        lost machine). Files are named by a digest of the parameters and the
        data, so grid-search folds never mix.
    random_state : int, RandomState or None, default=None
        Seeds head initialisation, shuffling, dropout, augmentation and the
        validation split: two CPU fits with the same seed predict identically.
    verbose : int, default=0
        ``>0``: a tqdm bar per epoch with the running loss.
    warm_start : bool, default=False
        ``fit`` continues from the fitted weights instead of reloading.

""".replace("%(min_steps)s", str(DEFAULT_MIN_STEPS))


def check_number(value, name, lo, hi, lo_open, hi_open):
    """Raise a ValueError unless ``value`` is a real number (not a bool) in the interval."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and (
        (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    )
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")


class BaseFineTune(SaveMixin, BaseEstimator):
    """Training engine shared by :class:`FineTuneClassifier` and :class:`FineTuneRegressor`."""

    def __init__(
        self,
        backbone=DEFAULT_BACKBONE,
        weights="DEFAULT",
        freeze_depth=0,
        reg_lambda=0.0,
        regularization="l2sp",
        max_epochs=10,
        batch_size=32,
        lr=2e-3,
        optimizer="adamw",
        lr_schedule="cosine",
        backbone_lr_scale="auto",
        layer_decay=None,
        weight_decay=1e-4,
        dropout=0.2,
        pooling="avg",
        layer="auto",
        head_init="solve",
        min_steps=DEFAULT_MIN_STEPS,
        bn_stats="auto",
        augment="default",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        linear_probe_epochs=0,
        fusion_alpha=1.0,
        task_weights=None,
        image_size=None,
        input_shape=None,
        pixel_range="auto",
        preprocessing=None,
        device="auto",
        num_workers="auto",
        checkpoint_dir=None,
        random_state=None,
        verbose=0,
        warm_start=False,
    ):
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
    def _check_params(self):
        check_positive_int(self.max_epochs, "max_epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.n_iter_no_change, "n_iter_no_change")
        check_positive_int(self.image_size, "image_size", allow_none=True)
        if isinstance(self.linear_probe_epochs, bool) or not isinstance(self.linear_probe_epochs, Integral) \
                or self.linear_probe_epochs < 0:
            raise ValueError(f"linear_probe_epochs must be an int >= 0, got {self.linear_probe_epochs!r}.")
        if isinstance(self.min_steps, bool) or not isinstance(self.min_steps, Integral) or self.min_steps < 0:
            raise ValueError(f"min_steps must be an int >= 0, got {self.min_steps!r}.")
        if not (isinstance(self.backbone_lr_scale, str) and self.backbone_lr_scale == "auto"):
            check_number(self.backbone_lr_scale, "backbone_lr_scale", 0, np.inf, False, True)
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}, got {self.bn_stats!r}.")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}.")
        if not (self.layer is None or (isinstance(self.layer, str) and (
                self.layer in (AUTO, EMBEDDING) or stage_index(self.layer) is not None))):
            raise ValueError(
                f"layer must be 'auto', None (the whole backbone) or 'stageK' (the backbone cut after "
                f"stage K), got {self.layer!r}."
            )
        check_regularization(self.regularization, self.reg_lambda)
        check_pooling(self.pooling)
        check_pixel_range(self.pixel_range)
        resolve_augment(self.augment)
        resolve_device(self.device)
        check_num_workers(self.num_workers)
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise TypeError(
                f"checkpoint_dir must be None or a folder path, got {type(self.checkpoint_dir).__name__}."
            )
        for name, lo, hi, lo_open, hi_open in [
            ("lr", 0, np.inf, True, True),
            ("weight_decay", 0, np.inf, False, True),
            ("dropout", 0, 1, False, True),
            ("validation_fraction", 0, 1, True, True),
            ("fusion_alpha", 0, 1, False, False),
        ]:
            check_number(getattr(self, name), name, lo, hi, lo_open, hi_open)
        if self.layer_decay is not None and not (isinstance(self.layer_decay, Real) and 0 < self.layer_decay <= 1):
            raise ValueError(f"layer_decay must be None or a float in (0, 1], got {self.layer_decay!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if not (callable(self.lr_schedule) or self.lr_schedule in SCHEDULES):
            raise ValueError(
                f"lr_schedule must be one of {SCHEDULES} or a callable f(optimizer) -> scheduler, "
                f"got {self.lr_schedule!r}."
            )

    def _check_y(self, y, n_samples):
        """``y`` as an array of shape (n,) or (n, k); a column vector becomes 1-D with a warning."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None; "
                f"pass the {self._target_noun}."
            )
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected; use y.ravel().",
                DataConversionWarning, stacklevel=3,
            )
            y = y.ravel()
        if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
            raise ValueError(
                f"y must be of shape (n_samples,) or (n_samples, n_tasks), got shape {y.shape}."
            )
        if len(y) != n_samples:
            raise ValueError(
                f"X and y have inconsistent numbers of samples: {n_samples} images and {len(y)} "
                f"{self._target_noun}."
            )
        return y

    def _task_weights(self, n_tasks):
        """``task_weights`` as a float array of length ``n_tasks`` (all ones by default)."""
        if self.task_weights is None:
            return np.ones(n_tasks)
        weights = np.asarray(self.task_weights, dtype=float) if not isinstance(self.task_weights, str) else None
        if weights is None or weights.shape != (n_tasks,) or not np.all(np.isfinite(weights)) \
                or np.any(weights < 0) or not np.any(weights > 0):
            raise ValueError(
                f"task_weights must be None or {n_tasks} non-negative numbers, not all zero (one per "
                f"column of y), got {self.task_weights!r}."
            )
        return weights

    # ---------------------------------------------------------------- fitting
    def _fit(self, X, y, sample_weight):
        """Fine-tune on ``(X, y)`` (see the subclasses' ``fit``)."""
        self._check_params()
        continuing = self.warm_start and hasattr(self, "net_")
        source = as_images(X, self, input_shape=self.input_shape, reset=not continuing)
        y = self._check_y(y, len(source))
        if len(source) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 samples to train (BatchNorm layers in training "
                f"mode cannot normalise a batch of one); got {len(source)} sample."
            )
        if continuing:
            y_enc = self._encode(y)
        else:
            y_enc = self._learn_targets(y)
            self.pixel_range_ = learn_pixel_range(source, self.pixel_range)
            self.history_ = []
        self._task_weights(self.n_outputs_)
        source.pixel_range = self.pixel_range_
        w = self._weights(y, sample_weight, len(source))
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        device = resolve_device(self.device)
        checkpointer = resume = None
        if self.checkpoint_dir is not None:
            checkpointer = Checkpointer(self.checkpoint_dir, run_digest(self, source, y, w))
            if self.warm_start and not continuing:
                resume = checkpointer.load()
        with _seeded(seed, device):
            if resume is not None:
                self._adopt(resume.estimator)
                self.net_.to(device)
            elif not continuing:
                self._build(device)
            else:
                self.net_.to(device)
            self._train(source, y_enc, w, rng, device, checkpointer, resume,
                        init_head=resume is None and not continuing)
        return self

    def _adopt(self, fitted):
        """Take the fitted attributes of a checkpoint's estimator."""
        for key, value in vars(fitted).items():
            if key.endswith("_") and not key.startswith("_"):
                setattr(self, key, value)
        self._pretrained = None
        self._partial_optimizer = None

    def _partial_fit(self, X, y, sample_weight, learn):
        """One epoch on ``(X, y)``; ``learn(y)`` sets up the targets on the first call."""
        first = not hasattr(self, "net_")
        self._check_params()
        source = as_images(X, self, input_shape=self.input_shape, reset=first)
        y = self._check_y(y, len(source))
        if len(source) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 samples to train (BatchNorm layers in training "
                f"mode cannot normalise a batch of one); got {len(source)} sample."
            )
        if first:
            learn(y)
            self.pixel_range_ = learn_pixel_range(source, self.pixel_range)
            self.history_ = []
        self._task_weights(self.n_outputs_)
        source.pixel_range = self.pixel_range_
        y_enc = self._encode(y)
        w = self._weights(y, sample_weight, len(source))
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max)) + len(self.history_)
        rng = np.random.RandomState(seed)
        device = resolve_device(self.device)
        with _seeded(seed, device):
            if first:
                self._build(device)
            self.net_.to(device)
            data = self._prepared(source, device)
            if first:
                self._resolve_few_image_settings(len(source))
            if first and self.head_init == "solve":
                self._solve_head(data, np.arange(len(source)), y_enc, w, device)
            if getattr(self, "_partial_optimizer", None) is None:
                freeze(self.net_, self.n_frozen_stages_, self.bn_stats_)
                self._partial_optimizer = make_optimizer(
                    self.net_, self.optimizer, self.lr, self.weight_decay,
                    self.backbone_lr_scale_, self.layer_decay,
                )
            penalty = self._penalty()
            self._run_epochs(
                data, np.arange(len(source)), None, y_enc, w, self._partial_optimizer, None,
                penalty, 1, "partial_fit", device, rng,
            )
        self.n_epochs_ = len(self.history_)
        self.best_epoch_ = None
        self.net_.eval()
        return self

    def _weights(self, y, sample_weight, n):
        w = _check_sample_weight(sample_weight, np.empty((n, 0)), dtype=np.float64)
        return w.astype(np.float32)

    def _build(self, device):
        backbone = load_backbone(self.backbone, self.weights, self.preprocessing)
        self.preprocessing_ = backbone.preprocessing.replace(image_size=self.image_size)
        size = self.preprocessing_.image_size
        layer = resolve_layer(backbone, self.layer, size)
        stage = None if layer in (None, EMBEDDING) else stage_index(layer, len(backbone.stages))
        if layer not in (None, EMBEDDING) and stage is None:
            raise ValueError(
                f"layer={self.layer!r}: backbone {backbone.name!r} has stages stage0 ... "
                f"stage{len(backbone.stages) - 1}."
            )
        if stage is not None:
            backbone = cut_backbone(backbone, stage, size)
        self.layer_ = EMBEDDING if stage is None else layer
        self.n_frozen_stages_ = check_freeze_depth(self.freeze_depth, len(backbone.stages))
        # the pretrained weights are kept during fit only when L2-SP or fusion needs them
        self._pretrained = _state_copy(backbone.model) if self._needs_anchor() else None
        backbone.eval()
        with torch.inference_mode():
            probe = prepare_batch(torch.zeros(1, 3, size, size), self.preprocessing_, torch.device("cpu"))
            n_features = pool(backbone.forward_features(probe), self.pooling).shape[1]
        net = TransferNet(backbone, n_features, self._n_head_outputs(), self.pooling, self.dropout)
        self.net_ = net.to(device)
        self._partial_optimizer = None

    def _prepared(self, source, device):
        workers = resolve_num_workers(self.num_workers, source, self.batch_size)
        return PreparedImages(source, self.preprocessing_, device, device.type == "cuda", workers)

    def _uses_l2sp(self):
        return self.reg_lambda > 0 and self.regularization == "l2sp"

    def _needs_anchor(self):
        return self._uses_l2sp() or self.fusion_alpha < 1.0

    def _anchor_state(self):
        """Pretrained backbone weights (reloaded after unpickling; never pickled)."""
        if getattr(self, "_pretrained", None) is None:
            self._pretrained = _state_copy(load_backbone(self.backbone, self.weights, self.preprocessing).model)
        return self._pretrained

    def _penalty(self):
        """The backbone penalty over the currently trainable weights."""
        anchor = self._anchor_state() if self._uses_l2sp() else None
        return WeightPenalty(self.net_, self.reg_lambda, self.regularization, anchor)

    def _resolve_few_image_settings(self, n_train):
        """``bn_stats_`` and ``backbone_lr_scale_`` for a training set of ``n_train`` images."""
        self.bn_stats_ = resolve_bn_stats(self.bn_stats, n_train, self.batch_size)
        self.backbone_lr_scale_ = resolve_backbone_lr_scale(self.backbone_lr_scale, n_train, self.batch_size)

    def _solve_head(self, data, train_idx, y_enc, w, device):
        """Start the head as a linear model solved on the frozen features (see ``_head_init``)."""
        net = self.net_
        features = precompute(net.features, net, data, device, self.batch_size, train_idx)
        z, mean, scale = standardise(features)
        coef, bias = self._solved_head(z, y_enc[train_idx], torch.as_tensor(w[train_idx]))
        set_head(net.head, coef, bias, mean, scale)

    def _train(self, source, y_enc, w, rng, device, checkpointer=None, resume=None, init_head=False):
        n = len(source)
        train_idx, valid_idx = np.arange(n), None
        if resume is not None:
            train_idx, valid_idx = resume.train_idx, resume.valid_idx
        elif self.early_stopping:
            train_idx, valid_idx = self._split(y_enc, rng)
        data = self._prepared(source, device)
        net = self.net_
        self._resolve_few_image_settings(len(train_idx))
        if init_head and self.head_init == "solve":
            self._solve_head(data, train_idx, y_enc, w, device)
        steps = max(1, -(-len(train_idx) // self.batch_size))
        self._best = None if resume is None else resume.best()
        n_stages = len(net.backbone.stages)
        phases = []
        if self.linear_probe_epochs:
            phases.append(("linear_probe", n_stages, self.linear_probe_epochs))
        # a budget of at least min_steps optimizer steps: few images make short epochs
        phases.append(("fine_tune", self.n_frozen_stages_, max(self.max_epochs, -(-self.min_steps // steps))))
        finished = False
        try:
            for index, (phase, n_frozen, epochs) in enumerate(phases):
                if resume is not None and index < resume.phase:
                    continue
                resuming = resume is not None and index == resume.phase
                done, no_improve = (resume.epochs_done, resume.no_improve) if resuming else (0, 0)
                freeze(net, n_frozen, self.bn_stats_)
                optimizer = make_optimizer(
                    net, self.optimizer, self.lr, self.weight_decay, self.backbone_lr_scale_, self.layer_decay
                )
                scheduler = make_scheduler(optimizer, self.lr_schedule, epochs * steps)
                penalty = self._penalty()
                if resuming:
                    resume.restore_training(optimizer, scheduler, rng, device)
                on_epoch = None
                if checkpointer is not None:
                    def on_epoch(count, no_improve, index=index, done=done, optimizer=optimizer,
                                 scheduler=scheduler):
                        checkpointer.save(
                            self, phase=index, epochs_done=done + count, optimizer=optimizer,
                            scheduler=scheduler, rng=rng, device=device, best=self._best,
                            no_improve=no_improve, train_idx=train_idx, valid_idx=valid_idx,
                        )
                run_net, run_data = net, data
                if resolve_augment(self.augment) is None:
                    # the frozen stages see no augmentation: their output is computed once
                    run_net, run_data = frozen_prefix(net, data, n_frozen, device, self.batch_size)
                stopped = self._run_epochs(
                    run_data, train_idx, valid_idx, y_enc, w, optimizer, scheduler, penalty, epochs - done,
                    phase, device, rng, net=run_net, no_improve=no_improve, on_epoch=on_epoch,
                )
                if stopped:
                    break
            finished = True
        except KeyboardInterrupt:
            warnings.warn(
                "fit was interrupted (KeyboardInterrupt); the estimator keeps the "
                + ("best weights so far." if self._best is not None else "weights of the last step."),
                RuntimeWarning, stacklevel=3,
            )
        if self._best is not None:
            net.load_state_dict(self._best[1])
            self.best_epoch_ = self._best[0]
        else:
            self.best_epoch_ = None
        self._best = None
        if self.fusion_alpha < 1.0:
            self._fuse(self.fusion_alpha)
        self.n_epochs_ = len(self.history_)
        net.eval()
        if checkpointer is not None and finished:
            checkpointer.finish(self)

    def _split(self, y_enc, rng):
        n = len(y_enc)
        n_valid = max(1, int(round(self.validation_fraction * n)))
        if n - n_valid < 2:
            raise ValueError(
                f"early_stopping with validation_fraction={self.validation_fraction} leaves "
                f"{n - n_valid} training samples; pass more data or early_stopping=False."
            )
        labels = self._stratify_labels(y_enc)
        stratify = False
        if labels is not None:
            counts = np.bincount(labels)
            stratify = counts.min() >= 2 and n_valid >= len(counts)
        splitter = (StratifiedShuffleSplit if stratify else ShuffleSplit)(
            n_splits=1, test_size=n_valid, random_state=rng
        )
        train_idx, valid_idx = next(splitter.split(np.zeros(n), labels if stratify else None))
        return np.sort(train_idx), np.sort(valid_idx)

    def _run_epochs(self, data, train_idx, valid_idx, y_enc, w, optimizer, scheduler, penalty,
                    epochs, phase, device, rng, net=None, no_improve=0, on_epoch=None):
        """Run epochs; returns True when early stopping ended training.

        ``on_epoch(count, no_improve)`` is called after each epoch (checkpoints).
        """
        net = self.net_ if net is None else net
        augment = resolve_augment(self.augment)
        loss_fn = self._loss
        for count in range(1, epochs + 1):
            epoch = len(self.history_)
            with EpochTimer() as timer, progress_bar(
                self.verbose, len(train_idx), f"epoch {epoch + 1} ({phase})", unit="img"
            ) as bar:
                lr = current_lr(optimizer)
                train_loss = run_epoch(
                    net, data, train_idx, y_enc, w, optimizer, scheduler, penalty, loss_fn,
                    augment, device, self.batch_size, rng, bar,
                )
                valid_loss = valid_score = None
                if valid_idx is not None:
                    valid_loss, valid_score = evaluate(
                        net, data, valid_idx, y_enc, w, loss_fn, self._score, device, self.batch_size
                    )
                    if bar is not None:
                        bar.set_postfix(loss=f"{train_loss:.4f}", valid_loss=f"{valid_loss:.4f}",
                                        valid_score=f"{valid_score:.4f}")
            self.history_.append({
                "epoch": epoch, "phase": phase, "train_loss": train_loss, "valid_loss": valid_loss,
                "valid_score": valid_score, "lr": lr, "penalty": penalty.value(), "seconds": timer.seconds,
            })
            if valid_idx is not None:
                if self._best is None or valid_loss < self._best[2]:
                    state = {k: v.detach().to("cpu", copy=True) for k, v in self.net_.state_dict().items()}
                    self._best = (epoch, state, valid_loss)
                    no_improve = 0
                else:
                    no_improve += 1
            if on_epoch is not None:
                on_epoch(count, no_improve)
            if valid_idx is not None and no_improve >= self.n_iter_no_change:
                return True
        return False

    def _fuse(self, alpha):
        """θ_backbone <- α θ_finetuned + (1 - α) θ_pretrained (integer buffers rounded)."""
        model = self.net_.backbone.model
        pretrained = self._anchor_state()
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                fused = alpha * tensor.double() + (1 - alpha) * pretrained[name].to(tensor.device).double()
                tensor.copy_(fused if tensor.is_floating_point() else fused.round())

    # ------------------------------------------------------------- predicting
    def _logits(self, X):
        check_is_fitted(self, "net_")
        source = as_images(X, self, input_shape=self.input_shape, pixel_range=self.pixel_range_)
        device = resolve_device(self.device)
        net = self.net_
        if module_device(net) != device:
            net.to(device)
        net.eval()
        workers = resolve_num_workers(self.num_workers, source, self.batch_size)
        outs = []
        forward_batches(
            net, source, self.preprocessing_, device, self.batch_size, device.type == "cuda", workers,
            lambda start, stop, out: outs.append(out),
        )
        return torch.cat(outs)

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

    def __setstate__(self, state):
        # estimators pickled or saved before these parameters existed keep the behaviour
        # they were fitted with
        state = dict(state)
        for name, value in EARLIER_BEHAVIOUR.items():
            state.setdefault(name, value)
        if "net_" in state:
            for name, value in EARLIER_FITTED.items():
                state.setdefault(name, value)
            if "backbone_lr_scale_" not in state:
                scale = state.get("backbone_lr_scale", 1.0)
                state["backbone_lr_scale_"] = 1.0 if isinstance(scale, str) else float(scale)
        super().__setstate__(state)

    def __getstate__(self):
        state = cpu_state(super().__getstate__(), ["net_"])
        for private in ("_pretrained", "_partial_optimizer", "_best"):
            state.pop(private, None)
        return state

    _doc_link_template = DOCS_URL
    _doc_link_module = "sktransfer"


def _state_copy(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _seeded:
    """Seed torch for the duration of a fit, leaving the global RNG state as it was."""

    def __init__(self, seed, device):
        self.seed = seed
        self.devices = [device.index or 0] if device.type == "cuda" else []

    def __enter__(self):
        self.fork = torch.random.fork_rng(devices=self.devices)
        self.fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self.fork.__exit__(*exc)

