"""The training loop: phases of epochs over a network, with loss terms, early stopping and checkpoints.

A :class:`Trainer` owns one fit's loop. The estimator hands it the network,
the prepared data, the encoded targets and weights, the task loss and score,
and the settings (:class:`TrainSettings`); the trainer runs the phases
(linear probe, fine-tuning), builds each phase's optimizer and schedule,
mixes each augmented batch when ``mixup`` is set (``_mixup.py``),
adds the loss terms, keeps the best epoch when a validation set is given,
and reports each epoch to the estimator's history and checkpoint callback.

A loss term is any callable ``term(step) -> scalar tensor or None`` with a
``value()`` for the history. The settings hold factories ``make(net) -> term``,
called at the start of each phase, once the trainable parameters are known
(the L2-SP pull toward the pretrained weights is one). Further objectives plug
in the same way.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

from .._allocator import keeping_freed_memory
from .._device import autocast, grad_scaler
from .._inference import NonFiniteOutput, predict_logits
from .._progress import progress_bar
from ..data._augment import in_memory_format_of
from ..data._batches import batch_indices
from ._divergence import Overflows, divergence, finite_weights, warn_overflowed
from ._freezing import freeze, train_mode
from ._frozen_prefix import frozen_prefix
from ._mixup import mix_batch, mixed_loss
from ._objectives import labelled_rows
from ._optim import current_lr, make_optimizer, make_scheduler


@dataclass
class Phase:
    """``epochs`` epochs with the first ``n_frozen`` backbone stages frozen."""

    name: str
    n_frozen: int
    epochs: int


@dataclass
class Step:
    """What a loss term may look at in one optimizer step.

    ``net`` and ``x`` are what the step runs: the whole network on prepared
    images, or, when frozen stages are computed once, the trainable rest of it
    on their precomputed output (``training/_frozen_prefix.py``). ``features``
    are the pooled features the head sees and ``output`` the head's output,
    for every row of the step. When the fit has unlabelled target rows, the
    step also holds a batch of them after the labelled rows: ``domain`` is
    True there (else ``domain`` is None). ``progress`` runs from 0 to 1 over
    the fit's optimizer steps.
    """

    net: torch.nn.Module
    x: torch.Tensor
    output: torch.Tensor
    indices: np.ndarray
    features: torch.Tensor | None = None
    domain: torch.Tensor | None = None
    progress: float = 1.0


@dataclass
class TrainSettings:
    """The estimator parameters the loop reads."""

    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    backbone_lr_scale: float = 1.0
    layer_decay: float | None = None
    lr_schedule: object = "cosine"
    batch_size: int = 32
    augment: object = None
    mixup: float = 0.0  # mixup's Beta parameter; 0 trains on the batches as they are
    bn_stats: str = "update"
    n_iter_no_change: int = 3
    verbose: int = 0
    loss_terms: list = field(default_factory=list)
    task_weight: float = 1.0  # the task loss's weight in the objective (1 - distill_weight when distilling)


def steps_per_epoch(n_rows, batch_size):
    """Optimizer steps of an epoch over ``n_rows``, as the schedule and the step budget count them."""
    return max(1, -(-n_rows // batch_size))


def augment_labelled(augment, x, n_labelled):
    """``x`` with its first ``n_labelled`` rows augmented. The target rows after them are seen as
    they are: their terms (the entropy of "info_max", a domain's statistics) are defined on the
    target images, not on augmented ones."""
    labelled = augment(x[:n_labelled])
    if labelled.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"augment changed the shape of a batch from {tuple(x.shape[1:])} to {tuple(labelled.shape[1:])}; "
            "with an adaptation the unlabelled target rows are not augmented and share the batch, so "
            "augment must keep the shape (N, 3, H, W). Resize with image_size instead."
        )
    return torch.cat([labelled, x[n_labelled:]])


class Trainer:
    """Runs the epochs of one fit (or one ``partial_fit`` call).

    Parameters
    ----------
    net : TransferNet
    data : PreparedImages
        Prepared images, served in batches by index.
    y, w : ndarray
        Encoded targets and sample weights, indexed like ``data``.
    loss, score : callable
        ``loss(output, target, weight) -> tensor`` and ``score(...) -> tensor``.
    settings : TrainSettings
    device : torch.device
    rng : numpy.random.RandomState
        Shuffling; its state is part of a checkpoint.
    history : list
        The estimator's ``history_``: one dict per epoch is appended.
    """

    def __init__(self, net, data, y, w, loss, score, settings, device, rng, history):
        self.net = net
        self.data = data
        self.y = y
        self.w = w
        self.loss = loss
        self.score = score
        self.settings = settings
        self.device = device
        self.rng = rng
        self.history = history
        self.best = None  # (epoch, state dict on the CPU, validation loss)
        self.target_idx = np.zeros(0, dtype=np.int64)  # unlabelled rows drawn beside each batch
        self._target_order = np.zeros(0, dtype=np.int64)
        self._steps_done, self._total_steps = 0, None
        self.scaler = grad_scaler(device)  # under fp16 autocast (V100, T4) only
        self.overflows = Overflows()

    # ------------------------------------------------------------ building
    def optimizer(self, terms=()):
        """The optimizer of the network's trainable parameters and those of the loss ``terms``."""
        s = self.settings
        extra = [p for term in terms for p in getattr(term, "parameters", list)()]
        return make_optimizer(self.net, s.optimizer, s.lr, s.weight_decay, s.backbone_lr_scale, s.layer_decay,
                              extra)

    def freeze(self, n_frozen):
        """Freeze the first ``n_frozen`` backbone stages (BatchNorm statistics as the settings say)."""
        freeze(self.net, n_frozen, self.settings.bn_stats)

    def loss_terms(self):
        """This phase's loss terms (built after freezing: they see the trainable parameters)."""
        return [make(self.net) for make in self.settings.loss_terms]

    # ------------------------------------------------------------- running
    def fit(self, phases, train_idx, valid_idx=None, resume=None, on_epoch=None):
        """Run ``phases``; returns True when they ran to the end (False: interrupted).

        ``resume`` (a checkpoint) skips the phases and epochs already done and
        restores the optimizer, schedule, gradient scale and generators. ``on_epoch(phase=,
        epochs_done=, optimizer=, scheduler=, scaler=, no_improve=)`` is called after
        every epoch. With a validation set, ``best`` keeps the best epoch's
        weights; :meth:`restore_best` loads them.
        """
        s = self.settings
        steps = steps_per_epoch(len(train_idx), s.batch_size)
        self._total_steps = steps * sum(phase.epochs for phase in phases)
        self.best = None if resume is None else resume.best()
        finished = False
        try:
            for index, phase in enumerate(phases):
                if resume is not None and index < resume.phase:
                    continue
                resuming = resume is not None and index == resume.phase
                done, no_improve = (resume.epochs_done, resume.no_improve) if resuming else (0, 0)
                self.freeze(phase.n_frozen)
                terms = self.loss_terms()
                optimizer = self.optimizer(terms)
                scheduler = make_scheduler(optimizer, s.lr_schedule, phase.epochs * steps)
                if resuming:
                    resume.restore_training(optimizer, scheduler, self.rng, self.device, self.scaler)
                callback = None
                if on_epoch is not None:
                    def callback(count, no_improve, index=index, done=done, optimizer=optimizer,
                                 scheduler=scheduler):
                        on_epoch(phase=index, epochs_done=done + count, optimizer=optimizer,
                                 scheduler=scheduler, scaler=self.scaler, no_improve=no_improve)
                run_net, run_data = self.net, self.data
                if s.augment is None and not s.mixup:
                    # the frozen stages see no augmentation or mixing: their output is computed once
                    run_net, run_data = frozen_prefix(self.net, self.data, phase.n_frozen, self.device, s.batch_size)
                stopped = self.run_epochs(
                    optimizer, scheduler, terms, phase.epochs - done, phase.name, train_idx,
                    valid_idx, net=run_net, data=run_data, no_improve=no_improve, on_epoch=callback,
                )
                if stopped:
                    break
            if self._steps_done and self.overflows.total == self._steps_done:
                self._diverged(f"under float16 autocast the objective overflowed in all {self._steps_done} "
                               "steps of the fit, none of which trained", where="in every epoch")
            finished = True
        except KeyboardInterrupt:
            warnings.warn(
                "fit was interrupted (KeyboardInterrupt); the estimator keeps the "
                + ("best weights so far." if self.best is not None else "weights of the last step."),
                RuntimeWarning, stacklevel=4,
            )
        return finished

    def restore_best(self):
        """Load the best epoch's weights; returns its index (``None`` without validation)."""
        if self.best is None:
            return None
        epoch, state, _ = self.best
        self.net.load_state_dict(state)
        self.best = None
        return epoch

    @keeping_freed_memory
    def run_epochs(self, optimizer, scheduler, terms, epochs, phase, train_idx, valid_idx=None,
                   net=None, data=None, no_improve=0, on_epoch=None):
        """Run ``epochs`` epochs; returns True when early stopping ended them.

        ``net``/``data`` default to the whole network on the prepared images
        (a frozen prefix passes a shorter network on precomputed activations).
        ``on_epoch(count, no_improve)`` is called after each epoch.
        """
        net = self.net if net is None else net
        data = self.data if data is None else data
        first_step, overflowed = self._steps_done, self.overflows.total
        stopped = self._epochs(optimizer, scheduler, terms, epochs, phase, train_idx, valid_idx, net, data,
                               no_improve, on_epoch)
        warn_overflowed(self.overflows.total - overflowed, self._steps_done - first_step, self.settings.lr)
        return stopped

    def _epochs(self, optimizer, scheduler, terms, epochs, phase, train_idx, valid_idx, net, data, no_improve,
                on_epoch):
        s = self.settings
        for count in range(1, epochs + 1):
            epoch = len(self.history)
            start = time.perf_counter()
            with progress_bar(s.verbose, len(train_idx), f"epoch {epoch + 1} ({phase})", unit="img") as bar:
                lr = current_lr(optimizer)
                train_loss = self._epoch(net, data, train_idx, optimizer, scheduler, terms, bar)
                valid_loss = valid_score = None
                if valid_idx is not None:
                    valid_loss, valid_score = self.evaluate(net, data, valid_idx)
                    if bar is not None:
                        bar.set_postfix(loss=f"{train_loss:.4f}", valid_loss=f"{valid_loss:.4f}",
                                        valid_score=f"{valid_score:.4f}")
            self.history.append({
                "epoch": epoch, "phase": phase, "train_loss": train_loss, "valid_loss": valid_loss,
                "valid_score": valid_score, "lr": lr, "penalty": float(sum(term.value() for term in terms)),
                "seconds": time.perf_counter() - start,
            })
            if valid_idx is not None:
                if self.best is None or valid_loss < self.best[2]:
                    state = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
                    self.best = (epoch, state, valid_loss)
                    no_improve = 0
                else:
                    no_improve += 1
            if on_epoch is not None:
                on_epoch(count, no_improve)
            if valid_idx is not None and no_improve >= s.n_iter_no_change:
                return True
        return False

    def _epoch(self, net, data, train_idx, optimizer, scheduler, terms, bar=None):
        """One pass over ``train_idx``; returns the mean training loss (loss terms excluded)."""
        s = self.settings
        train_mode(net)
        total, count = 0.0, 0.0
        batches = batch_indices(len(train_idx), s.batch_size, self.rng)
        overflowed = self.overflows.total
        for batch in batches:
            idx = train_idx[batch]
            n_labelled, domain = len(idx), None
            if len(self.target_idx):
                idx = np.concatenate([idx, self._target_batch(n_labelled)])
                domain = torch.arange(len(idx), device=self.device) >= n_labelled
            x = data.batch(idx)
            if s.augment is not None:
                augmented = s.augment(x) if domain is None else augment_labelled(s.augment, x, n_labelled)
                x = in_memory_format_of(x, augmented)
            mix = None
            if s.mixup > 0 and domain is None and len(x) > 1:
                mixed, mix = mix_batch(x, s.mixup)
                x = in_memory_format_of(x, mixed)
            target = torch.as_tensor(self.y[idx[:n_labelled]], device=self.device)
            weight = torch.as_tensor(self.w[idx[:n_labelled]], device=self.device, dtype=torch.float32)
            with autocast(self.device):
                features = net.features(x)
                output = net.classify(features)
            if mix is None:
                loss = self.loss(output[:n_labelled], target, weight)
            else:
                loss = mixed_loss(self.loss, output, target, weight, mix)
            objective = loss if s.task_weight == 1 else s.task_weight * loss
            progress = 1.0 if not self._total_steps else min(1.0, self._steps_done / self._total_steps)
            step = Step(net, x, output, idx, features, domain, progress)
            for term in terms:
                extra = term(step)
                if extra is not None:
                    objective = objective + extra
            # the loop's wait for the device comes before the backward pass (it came after the step,
            # twice): a step whose objective is not finite would make every weight NaN
            loss_value, objective_value = torch.stack(
                [loss.detach().reshape(()).float(), objective.detach().reshape(()).float()]).tolist()
            if math.isfinite(objective_value):
                stepped = self._step(optimizer, objective)
                self.overflows.in_a_row = 0
            else:
                self._not_finite(objective_value, len(batches))  # raises, except under fp16 autocast
                stepped = False
            self._steps_done += 1
            if scheduler is not None and stepped:
                scheduler.step()
            if math.isfinite(loss_value):
                labelled = self._labelled_weight(idx[:n_labelled])  # rows without a label had no loss
                total += loss_value * labelled
                count += labelled
            if bar is not None:
                bar.update(n_labelled)
                bar.set_postfix(loss=f"{total / max(count, 1e-12):.4f}")
        if not finite_weights(net):  # a finite objective whose gradients were not
            self._diverged("its weights are no longer finite")
        if count == 0 and self.overflows.total > overflowed:
            return float("nan")  # every step overflowed fp16: no loss to report
        return total / max(count, 1e-12)

    def _labelled_weight(self, idx):
        """The sample weight of the rows of ``idx`` that have a label (read on the CPU)."""
        return float(self.w[idx][labelled_rows(self.y[idx])].sum())

    def _not_finite(self, value, n_batches):
        """A step's objective is ``value``, not finite: ``TrainingDiverged``, before the step makes
        every weight NaN; under fp16 autocast the step is skipped (:class:`Overflows`)."""
        if self.scaler is None:
            self._diverged(f"a step's objective was {value}", network_usable=True)
        if self.overflows.add(n_batches):
            self._diverged(f"under float16 autocast the objective overflowed in {self.overflows.in_a_row} "
                           "steps in a row, none of which trained")

    def _diverged(self, what, network_usable=False, where=None, cause=None):
        """Raise ``TrainingDiverged`` (from ``cause``), ``where`` defaulting to the epoch that runs."""
        s = self.settings
        where = where or f"in epoch {len(self.history) + 1}"
        raise divergence(what, s.lr, s.optimizer, where, network_usable) from cause

    def _step(self, optimizer, objective):
        """Gradients of ``objective`` and an optimizer step (scaled under fp16 autocast). Returns
        False where the scaler skipped the step (its scaled gradients overflowed, and it lowered
        the scale): the schedule then waits for the next step."""
        optimizer.zero_grad(set_to_none=True)
        if not objective.requires_grad:  # a batch of unlabelled rows only, with no term on them, has nothing to learn
            return True
        if self.scaler is None:
            objective.backward()
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.scale(objective).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def _target_batch(self, n):
        """``n`` unlabelled rows, cycling through shuffled passes over ``target_idx``."""
        while len(self._target_order) < n:
            self._target_order = np.concatenate([self._target_order, self.rng.permutation(self.target_idx)])
        out, self._target_order = self._target_order[:n], self._target_order[n:]
        return out

    def evaluate(self, net, data, indices):
        """Weighted loss and score (accuracy, R², ...) on ``indices``."""
        try:
            output = predict_logits(net, data, indices, self.device, self.settings.batch_size)
        except NonFiniteOutput as exc:  # finite but huge weights: predict would fail the same way
            self._diverged("its outputs on the validation images are not finite", cause=exc)
        target = torch.as_tensor(self.y[indices])
        weight = torch.as_tensor(self.w[indices], dtype=torch.float32)
        return float(self.loss(output, target, weight)), float(self.score(output, target, weight))


def holdout_split(n, labels, fraction, rng):
    """``(train_idx, valid_idx)``: a validation share of ``n`` samples for early stopping,
    stratified by ``labels`` when every class can appear on both sides."""
    n_valid = max(1, int(round(fraction * n)))
    if n - n_valid < 2:
        raise ValueError(
            f"early_stopping with validation_fraction={fraction} leaves {n - n_valid} training "
            "samples; pass more data or early_stopping=False."
        )
    stratify = False
    if labels is not None:
        counts = np.bincount(labels)
        stratify = counts.min() >= 2 and n_valid >= len(counts)
    splitter = (StratifiedShuffleSplit if stratify else ShuffleSplit)(n_splits=1, test_size=n_valid, random_state=rng)
    train_idx, valid_idx = next(splitter.split(np.zeros(n), labels if stratify else None))
    return np.sort(train_idx), np.sort(valid_idx)
