"""FineTuneRegressor: a pretrained CNN fine-tuned end to end for continuous targets."""

from __future__ import annotations

from numbers import Real

import numpy as np
import torch
from sklearn.base import RegressorMixin, _fit_context
from sklearn.utils.validation import check_array, check_is_fitted

from ._docstrings import fill_docstring
from ._finetune import FINETUNE_CONSTRAINTS, BaseFineTune
from ._validation import Number, StrOptions
from .backbones._timm import DEFAULT_BACKBONE
from .training._head_init import solve_ridge
from .training._objectives import regression_loss, regression_score

LOSSES = ("squared_error", "huber")


class FineTuneRegressor(RegressorMixin, BaseFineTune):
    """Fine-tune a pretrained CNN end to end behind the scikit-learn regressor API.

    The same network and training as :class:`FineTuneClassifier` (backbone,
    pooling, dropout, new linear head; ``freeze_depth``, ``reg_lambda``, LP-FT,
    fusion, early stopping, checkpoints), with one output per target column
    and a squared-error or Huber loss. Targets are standardised with the mean
    and standard deviation seen by ``fit`` (so the learning rate does not
    depend on their units) and predictions are mapped back.

%(transfer_objective)s    Unlike the classifier, ``augment`` defaults to ``False``: random crops
    change what many regression targets measure (sizes, positions, counts).
    Pass ``augment="default"`` or a :class:`RandomAffine` when the target is
    invariant to them.

    Parameters
    ----------
%(shared_parameters)s    loss : {"squared_error", "huber"}, default="squared_error"
        ``"squared_error"``: half the squared error; ``"huber"``: quadratic up
        to ``huber_delta`` standard deviations of the target, linear beyond
        (robust to outliers).
    huber_delta : float, default=1.0
        Threshold of the Huber loss, in standard deviations of the target.
    task_weights : array-like of shape (n_targets,) or None, default=None
        Multi-output ``y``: the loss is ``sum_t task_weights[t] * L_t``.
        ``None``: all ones. In multi-output ``y`` a NaN marks a missing value,
        which that target's loss skips (single-output ``y`` must be finite).

    Attributes
    ----------
    n_outputs_ : int
        Number of target columns.
    y_mean_, y_scale_ : ndarray of shape (n_targets,)
        Standardisation of the targets learned by ``fit`` (by the first
        ``partial_fit`` call).
    net_ : TransferNet
    history_ : list of dict
        Per epoch: ``train_loss``, ``valid_loss`` (standardised units),
        ``valid_score`` (R²), ``lr``, ``seconds``...
%(fitted_attributes)s
    See Also
    --------
    FineTuneClassifier : the same for class labels.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sktransfer import FineTuneRegressor
    >>> X, y = load_digits(return_X_y=True)
    >>> reg = FineTuneRegressor(image_size=32, max_epochs=1, random_state=0)
    >>> reg.fit(X[:64], y[:64].astype(float)).predict(X[:3]).shape
    (3,)
    """

    _target_noun = "target values"

    _parameter_constraints: dict = {
        **FINETUNE_CONSTRAINTS,
        "loss": [StrOptions(set(LOSSES))],
        "huber_delta": [Number(Real, 0, None, closed="neither")],
    }

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
        dropout=0.0,
        pooling="avg",
        layer="auto",
        head_init="auto",
        head_hidden=None,
        min_steps="auto",
        bn_stats="auto",
        augment=False,
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
        loss="squared_error",
        huber_delta=1.0,
    ):
        super().__init__(
            backbone=backbone, weights=weights, freeze_depth=freeze_depth, reg_lambda=reg_lambda,
            regularization=regularization, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
            optimizer=optimizer, lr_schedule=lr_schedule, backbone_lr_scale=backbone_lr_scale,
            layer_decay=layer_decay, weight_decay=weight_decay, dropout=dropout, pooling=pooling,
            layer=layer, head_init=head_init, head_hidden=head_hidden, min_steps=min_steps, bn_stats=bn_stats,
            augment=augment, early_stopping=early_stopping, validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change, linear_probe_epochs=linear_probe_epochs,
            fusion_alpha=fusion_alpha, task_weights=task_weights, image_size=image_size,
            input_shape=input_shape, pixel_range=pixel_range, preprocessing=preprocessing, device=device,
            num_workers=num_workers, checkpoint_dir=checkpoint_dir, random_state=random_state,
            verbose=verbose, warm_start=warm_start,
        )
        self.loss = loss
        self.huber_delta = huber_delta

    # ------------------------------------------------------------ target hooks
    def _check_y(self, y, n_samples):
        y = super()._check_y(y, n_samples)
        try:
            y = check_array(
                y, ensure_2d=False, dtype=np.float64, input_name="y",
                ensure_all_finite=True if y.ndim == 1 else "allow-nan",
            )
        except ValueError as exc:
            hint = " (single-output y cannot have missing values)" if y.ndim == 1 and "NaN" in str(exc) else ""
            raise ValueError(f"{exc}{hint}") from None
        if y.ndim == 2:
            empty = np.flatnonzero(np.isnan(y).all(axis=0))
            if len(empty):
                raise ValueError(f"y columns {empty.tolist()} hold no value (all NaN).")
        return y

    def _learn_targets(self, y):
        y2 = y.reshape(len(y), -1)
        self.n_outputs_ = y2.shape[1]
        self.y_mean_ = np.nanmean(y2, axis=0)
        scale = np.nanstd(y2, axis=0)
        self.y_scale_ = np.where(scale > 0, scale, 1.0)
        return self._encode(y)

    def _encode(self, y):
        width = 1 if y.ndim == 1 else y.shape[1]
        if width != self.n_outputs_:
            raise ValueError(f"y has {width} target columns; the estimator was fitted with {self.n_outputs_}.")
        scaled = (y.reshape(len(y), -1) - self.y_mean_) / self.y_scale_
        return scaled.astype(np.float32).reshape(y.shape)

    def _n_head_outputs(self):
        return self.n_outputs_

    def _loss(self, pred, target, weight):
        return regression_loss(
            pred, target, weight, self._task_weights(self.n_outputs_), self.loss, self.huber_delta
        )

    def _score(self, pred, target, weight):
        return regression_score(pred, target, weight)

    def _stratify_labels(self, y_enc):
        return None

    def _start_point(self, n_train):
        """Nothing kept of the starting point (the classifier keeps its probe, ``_probe_ensemble.py``)."""

    def _solved_head(self, z, y_enc, w):
        target = torch.as_tensor(y_enc).reshape(len(y_enc), -1)
        coefs, biases = [], []
        for t in range(target.shape[1]):
            known = ~torch.isnan(target[:, t])
            coef, bias = solve_ridge(z[known], target[known, t], w[known])
            coefs.append(coef)
            biases.append(bias)
        return torch.stack(coefs), torch.stack(biases)

    # ---------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fine-tune on images ``X`` with targets ``y``.

        Parameters
        ----------
        X : images
            Arrays, tensors, 2-D tables, paths or PIL images.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Continuous targets (NaN marks a missing value in multi-output ``y``).
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : FineTuneRegressor
        """
        return self._fit(X, y, sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Train one more epoch; the first call sets the target standardisation.

        Parameters
        ----------
        X : images
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : FineTuneRegressor
        """
        return self._partial_fit(X, y, sample_weight, self._learn_targets)

    def predict(self, X):
        """Predicted targets.

        Parameters
        ----------
        X : images

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_targets)
        """
        check_is_fitted(self, "net_")
        out = self._logits(X).double().numpy() * self.y_scale_ + self.y_mean_
        return out[:, 0] if self.n_outputs_ == 1 else out

    def score(self, X, y, sample_weight=None):
        """R² (``sklearn.metrics.r2_score``, uniform average over targets); with
        missing values in ``y``, each target's R² on its known values, averaged.

        Parameters
        ----------
        X : images
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        score : float
        """
        y_arr = np.asarray(y, dtype=np.float64)
        if not np.isnan(y_arr).any():
            return super().score(X, y, sample_weight)
        pred = np.asarray(self.predict(X), dtype=np.float64)
        if len(pred) != len(y_arr):
            raise ValueError(f"X has {len(pred)} images and y has {len(y_arr)} rows: give one target row per image.")
        w = self._sample_weights(y_arr, sample_weight, len(y_arr)).astype(np.float64)
        pred, y_arr = (torch.as_tensor(a.reshape(len(a), -1)) for a in (pred, y_arr))
        return float(regression_score(pred, y_arr, torch.as_tensor(w)))  # in float64, as r2_score

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


FineTuneRegressor.__doc__ = fill_docstring(FineTuneRegressor.__doc__)
