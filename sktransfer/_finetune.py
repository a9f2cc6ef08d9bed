"""FineTuneClassifier: end-to-end fine-tuning of a pretrained CNN as a scikit-learn classifier."""

from __future__ import annotations

import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.utils import check_random_state, compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted

from ._augment import resolve_augment
from ._backbones import DEFAULT_BACKBONE, load_backbone
from ._checkpoint import Checkpointer, run_digest
from ._data import PreparedImages
from ._device import (
    HalvingOnOOM,
    autocast,
    cpu_copy,
    cpu_state,
    module_device,
    resolve_device,
)
from ._extraction import batch_invariant
from ._extractor import DOCS_URL, check_positive_int
from ._freezing import check_freeze_depth, freeze
from ._inputs import as_images, check_pixel_range, learn_pixel_range
from ._loader import check_num_workers, prepared_batches, resolve_num_workers
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
    weighted_cross_entropy,
)


class FineTuneClassifier(SaveMixin, ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained CNN end to end behind the scikit-learn classifier API.

    The network is the pretrained backbone (its own classifier dropped), a
    pooling of its last feature map, dropout, and a new linear head with one
    output per class, trained with weighted cross-entropy.

    **Transfer objective.** Training minimises, over the network weights θ,
    ``L_T(θ) + reg_lambda / 2 * ||θ_backbone - θ_pretrained||²`` (L2-SP; Li,
    Grandvalet & Davoine, 2018). The joint source/target objective
    ``min L_S(θ) + λ L_T(θ)`` needs the source data; when it is absent, the
    pretrained weights stand for the minimiser of ``L_S`` and a quadratic
    approximation of ``L_S`` around them is exactly this pull toward
    ``θ_pretrained`` (with ``reg_lambda`` playing the part of ``1/λ``: the larger
    it is, the more the source task weighs). ``reg_lambda=0`` is plain
    fine-tuning. ``regularization="l2"`` pulls toward zero instead (classic
    weight decay). The penalty covers the trainable backbone weights only; the
    optimizer applies no weight decay of its own to them, so nothing is
    counted twice. The new head gets the optimizer's ``weight_decay``.

    Parameters
    ----------
    backbone : str, torch.nn.Module, Backbone or fitted estimator, default="efficientnet_lite0"
        As for :class:`PretrainedFeatureExtractor`. A fitted
        ``FineTuneClassifier`` (or ``clf.export_backbone()``, which survives
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
    backbone_lr_scale : float, default=1.0
        Backbone learning rate relative to ``lr`` (e.g. 0.1 for a gentler update
        of the pretrained weights).
    layer_decay : float or None, default=None
        Layer-wise learning-rate decay: stage ``i`` of ``n`` gets an extra
        factor ``layer_decay ** (n - 1 - i)``.
    weight_decay : float, default=1e-4
        Optimizer weight decay of the new head.
    label_smoothing : float, default=0.0
    dropout : float, default=0.2
        Dropout before the new head.
    pooling : str or None, default="avg"
        Pooling of the last feature map (see :class:`PretrainedFeatureExtractor`).
    augment : "default", "flip", bool or callable, default="default"
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
    class_weight : dict, "balanced" or None, default=None
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

    Attributes
    ----------
    classes_ : ndarray
        Class labels.
    net_ : TransferNet
        The trained network (backbone, pooling, dropout, head).
    history_ : list of dict
        Per epoch: ``epoch``, ``phase``, ``train_loss``, ``valid_loss``,
        ``valid_score``, ``lr``, ``seconds``.
    n_epochs_ : int
        Epochs run in total.
    best_epoch_ : int or None
        Epoch (0-based, counted in ``history_``) whose weights were kept by
        early stopping; ``None`` without early stopping.
    n_frozen_stages_ : int
    pixel_range_ : tuple of float
    n_features_in_ : int
        Only when ``X`` is a 2-D table.

    See Also
    --------
    PretrainedFeatureExtractor : frozen embeddings for any sklearn model.
    TrainingHistoryDisplay : plots ``history_``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import FineTuneClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = FineTuneClassifier(image_size=32, max_epochs=1, random_state=0)
    >>> clf.fit(X[:64], y[:64]).predict(X[:3]).shape
    (3,)
    """

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
        backbone_lr_scale=1.0,
        layer_decay=None,
        weight_decay=1e-4,
        label_smoothing=0.0,
        dropout=0.2,
        pooling="avg",
        augment="default",
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        linear_probe_epochs=0,
        fusion_alpha=1.0,
        class_weight=None,
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
        self.label_smoothing = label_smoothing
        self.dropout = dropout
        self.pooling = pooling
        self.augment = augment
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.linear_probe_epochs = linear_probe_epochs
        self.fusion_alpha = fusion_alpha
        self.class_weight = class_weight
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
            ("backbone_lr_scale", 0, np.inf, False, True),
            ("weight_decay", 0, np.inf, False, True),
            ("label_smoothing", 0, 1, False, True),
            ("dropout", 0, 1, False, True),
            ("validation_fraction", 0, 1, True, True),
            ("fusion_alpha", 0, 1, False, False),
        ]:
            value = getattr(self, name)
            ok = isinstance(value, Real) and not isinstance(value, bool) and (
                (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
            )
            if not ok:
                interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
                raise ValueError(f"{name} must be a number in {interval}, got {value!r}.")
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
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None; "
                "pass the class labels."
            )
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected; use y.ravel().",
                DataConversionWarning, stacklevel=3,
            )
            y = y.ravel()
        if y.ndim != 1:
            raise ValueError(f"y must be a 1-D array of class labels, got shape {y.shape}.")
        if len(y) != n_samples:
            raise ValueError(
                f"X and y have inconsistent numbers of samples: {n_samples} images and {len(y)} labels."
            )
        check_classification_targets(y)
        return y

    # ---------------------------------------------------------------- fitting
    def fit(self, X, y, sample_weight=None):
        """Fine-tune on images ``X`` with labels ``y``.

        Parameters
        ----------
        X : images
            Arrays, tensors, 2-D tables, paths or PIL images.
        y : array-like of shape (n_samples,)
            Class labels of any type.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : FineTuneClassifier
        """
        self._check_params()
        continuing = self.warm_start and hasattr(self, "net_")
        source = as_images(X, self, input_shape=self.input_shape, reset=not continuing)
        y = self._check_y(y, len(source))
        if continuing:
            y_enc = self._encode(y)
        else:
            self.classes_, y_enc = np.unique(y, return_inverse=True)
            if len(self.classes_) < 2:
                raise ValueError(
                    f"FineTuneClassifier needs at least 2 classes in y; got 1 class ({self.classes_[0]!r})."
                )
            self.pixel_range_ = learn_pixel_range(source, self.pixel_range)
            self.history_ = []
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
            self._train(source, y_enc, w, rng, device, checkpointer, resume)
        return self

    def _adopt(self, fitted):
        """Take the fitted attributes of a checkpoint's estimator."""
        for key, value in vars(fitted).items():
            if key.endswith("_") and not key.startswith("_"):
                setattr(self, key, value)
        self._pretrained = None
        self._partial_optimizer = None

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train one more epoch (the first call needs ``classes``).

        Parameters
        ----------
        X : images
        y : array-like of shape (n_samples,)
        classes : array-like, default=None
            All labels that will ever appear; required on the first call.
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : FineTuneClassifier
        """
        first = not hasattr(self, "net_")
        self._check_params()
        source = as_images(X, self, input_shape=self.input_shape, reset=first)
        y = self._check_y(y, len(source))
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = np.unique(np.asarray(classes))
            if len(self.classes_) < 2:
                raise ValueError("partial_fit needs at least 2 classes in `classes`.")
            self.pixel_range_ = learn_pixel_range(source, self.pixel_range)
            self.history_ = []
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={classes!r} differs from the first call's {self.classes_!r}.")
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
            if getattr(self, "_partial_optimizer", None) is None:
                freeze(self.net_, self.n_frozen_stages_)
                self._partial_optimizer = make_optimizer(
                    self.net_, self.optimizer, self.lr, self.weight_decay,
                    self.backbone_lr_scale, self.layer_decay,
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

    def _encode(self, y):
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if len(unknown):
            raise ValueError(
                f"y holds labels {unknown.tolist()} not seen in the first fit; "
                f"known classes: {self.classes_.tolist()}."
            )
        return np.searchsorted(self.classes_, y)

    def _weights(self, y, sample_weight, n):
        w = _check_sample_weight(sample_weight, np.empty((n, 0)), dtype=np.float64)
        if self.class_weight is not None:
            w = w * compute_sample_weight(self.class_weight, y)
        return w.astype(np.float32)

    def _build(self, device):
        backbone = load_backbone(self.backbone, self.weights, self.preprocessing)
        self.preprocessing_ = backbone.preprocessing.replace(image_size=self.image_size)
        self.n_frozen_stages_ = check_freeze_depth(self.freeze_depth, len(backbone.stages))
        # the pretrained weights are kept during fit only when L2-SP or fusion needs them
        self._pretrained = _state_copy(backbone.model) if self._needs_anchor() else None
        size = self.preprocessing_.image_size
        backbone.eval()
        with torch.inference_mode():
            probe = prepare_batch(torch.zeros(1, 3, size, size), self.preprocessing_, torch.device("cpu"))
            n_features = pool(backbone.forward_features(probe), self.pooling).shape[1]
        net = TransferNet(backbone, n_features, len(self.classes_), self.pooling, self.dropout)
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

    def _train(self, source, y_enc, w, rng, device, checkpointer=None, resume=None):
        n = len(source)
        train_idx, valid_idx = np.arange(n), None
        if resume is not None:
            train_idx, valid_idx = resume.train_idx, resume.valid_idx
        elif self.early_stopping:
            train_idx, valid_idx = self._split(y_enc, rng)
        data = self._prepared(source, device)
        net = self.net_
        steps = max(1, -(-len(train_idx) // self.batch_size))
        self._best = None if resume is None else resume.best()
        n_stages = len(net.backbone.stages)
        phases = []
        if self.linear_probe_epochs:
            phases.append(("linear_probe", n_stages, self.linear_probe_epochs))
        phases.append(("fine_tune", self.n_frozen_stages_, self.max_epochs))
        finished = False
        try:
            for index, (phase, n_frozen, epochs) in enumerate(phases):
                if resume is not None and index < resume.phase:
                    continue
                resuming = resume is not None and index == resume.phase
                done, no_improve = (resume.epochs_done, resume.no_improve) if resuming else (0, 0)
                freeze(net, n_frozen)
                optimizer = make_optimizer(
                    net, self.optimizer, self.lr, self.weight_decay, self.backbone_lr_scale, self.layer_decay
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
                    run_net, run_data = frozen_prefix(
                        net, data, n_frozen, device, self.batch_size, data.batch(np.arange(min(2, n)))
                    )
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
        counts = np.bincount(y_enc)
        stratify = counts.min() >= 2 and n_valid >= len(counts)
        splitter = (StratifiedShuffleSplit if stratify else ShuffleSplit)(
            n_splits=1, test_size=n_valid, random_state=rng
        )
        train_idx, valid_idx = next(splitter.split(np.zeros(n), y_enc if stratify else None))
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
                        net, data, valid_idx, y_enc, w, loss_fn, device, self.batch_size
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

    def _loss(self, logits, target, weight):
        return weighted_cross_entropy(logits, target, weight, self.label_smoothing)

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
        batches = prepared_batches(
            source, self.preprocessing_, self.batch_size, device, device.type == "cuda", workers
        )
        run = HalvingOnOOM(lambda b: batch_invariant(net, b))
        with torch.inference_mode(), autocast(device):
            return torch.cat([run(x).float().cpu() for _, _, x in batches])

    def decision_function(self, X):
        """Logits of the new head (binary: one column, positive class minus negative).

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        logits = self._logits(X).numpy().astype(np.float64)
        if len(self.classes_) == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits), columns ordered as ``classes_``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        return torch.softmax(self._logits(X).double(), dim=1).numpy()

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`, computed stably.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        return torch.log_softmax(self._logits(X).double(), dim=1).numpy()

    def predict(self, X):
        """Predicted class labels.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "net_")
        return self.classes_[self._logits(X).argmax(1).numpy()]

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

