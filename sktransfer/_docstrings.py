"""Text shared by several docstrings, and the documentation address."""

DOCS_URL = "https://sktransfer.readthedocs.io/en/latest/api.html#{estimator_name}"

# min_steps="auto": chosen from the learning curves of benchmarks/few_shot.py, and, for fits whose
# adaptation loss learns from target rows, from benchmarks/domain_adaptation.py (docs/benchmarks.md)
DEFAULT_MIN_STEPS, ADAPTATION_MIN_STEPS = 100, 300

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
        Images per training step, and per forward pass on the CPU. On a GPU,
        ``predict`` runs ``max(batch_size, n)`` images a pass, ``n`` being the
        extractor's ``batch_size="auto"`` there (256 up to 256 px).
    lr : float, default=2e-3
        Peak learning rate of the new head (and, times ``backbone_lr_scale``,
        of the backbone). A rate at which training diverges (a step's objective,
        the weights or the validation outputs become NaN or inf) makes ``fit``
        raise ``ValueError``; a new fit then leaves the estimator unfitted
        (docs/reliability.md says what a continued fit keeps).
    optimizer : {"adamw", "adam", "sgd"}, default="adamw"
    lr_schedule : {"cosine", "constant", "linear", "onecycle"} or callable, default="cosine"
        Per-step schedule (cosine and linear start with a 10 % linear
        warm-up). A callable ``f(optimizer) -> scheduler`` is stepped per batch.
    backbone_lr_scale : float or "auto", default="auto"
        Backbone learning rate relative to ``lr`` (e.g. 0.1 for a gentler update
        of the pretrained weights). ``"auto"``: 0.3 when the training set holds
        fewer than 10 batches, unless the network trained ends at a map of
        stride 8 or less (Lite0 cut after stage 3, as ``layer="auto"`` does at
        17-32 px); else 1.0 (``backbone_lr_scale_`` tells which). With few
        images, a full-rate backbone drifts from features on which the solved
        head was already good (photograph crops, 50 images at 64 px: 0.80 at
        1.0, 0.82 at 0.3); after stage 3 the pretrained filters are generic and
        the images small for them, and the full rate measured better on all
        three image sets of ``benchmarks/few_shot.py`` at 32 px. The rate
        follows the cut, not the image size: cut after stage 3 at 48 px, the
        full rate was better on the digits; cut after stage 5, 0.3 (with mixup)
        won four of five cells (docs/benchmarks.md, "Between the measured sizes").
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
        keeps the whole backbone. ``"auto"``: the whole backbone when its last
        map is at least 4x4 pixels (from 97 px for Lite0); on smaller inputs,
        whose last maps shrink to 3x3 or less, the deepest stage whose map is
        at least 3x3 and larger than the last map (Lite0: ``"stage3"`` at 17-32
        px, ``"stage5"`` at 33-96 px), which measured better there and runs
        only the kept stages. One step deeper than the extractor's rule (a map
        of 4x4): with few images at 24-48 px, fine-tuning after the 3x3 map
        (with the ``backbone_lr_scale`` and ``mixup`` that follow the cut)
        beat fine-tuning after the larger one before it (docs/benchmarks.md,
        "Between the measured sizes" and "The rule follows the cut"). A
        backbone already cut (a fitted estimator's, ``export_backbone()``) is
        kept whole while its last map is at least 3x3.
        ``layer_`` tells what was chosen; ``freeze_depth`` counts the stages
        that are kept.
    head_init : {"auto", "solve", "zeros", "random"}, default="auto"
        ``"solve"``: before training, the new head is set to a linear model
        solved on the frozen pretrained features of the training images
        (L2-penalised logistic regression for the classifier, ridge for the
        regressor, on standardised features), so that fine-tuning starts where
        a linear probe ends and the backbone receives no random gradients.
        Features that barely vary on the training images (units all but dead
        after their activation) are divided by a tenth of the features' RMS
        spread instead of being stretched to unit variance.
        ``"zeros"``: the last layer's weight and bias are zero (Big
        Transfer's head): the first steps train the head alone, and the
        backbone then follows a head that has learned something.
        ``"random"``: PyTorch's default initialisation. ``"auto"``:
        ``"solve"`` when training computes the features the head is solved
        on (``bn_stats_="pretrained"``, the few-image default, or the whole
        backbone frozen) or a probe ensemble needs it, else ``"zeros"``
        (``head_init_`` tells which). Training with batch statistics
        (``bn_stats_="update"``) changes the features under a solved head
        from its first step; there the zero head measured better
        (docs/benchmarks.md, "The head's start when BatchNorm statistics
        update").
    head_hidden : int, sequence of int or None, default=None
        Hidden layers in the new head: ``(1024,)`` makes it Linear(1024) ->
        ReLU -> Dropout -> Linear, as in the classic "Flatten -> Dense(1024)
        -> softmax" recipe. When the head is solved (``head_init_``) the
        hidden layers keep their random initialisation (fed standardised
        features) and the last layer is solved on their activations;
        ``"zeros"`` sets the last layer only. ``None``: one linear layer,
        which measured as well or better with few images (docs/benchmarks.md).
    min_steps : int or "auto", default="auto"
        Train for at least this many optimizer steps: ``max(max_epochs,
        ceil(min_steps / steps per epoch))`` epochs. Few images make short
        epochs (20 images at ``batch_size=32`` make one step); this gives them
        a useful budget, and does nothing once ``max_epochs`` epochs are longer.
        ``"auto"``: %(min_steps)s steps, or %(adaptation_min_steps)s when an adaptation loss learns
        from unlabelled target rows during training (``FineTuneClassifier``'s
        ``adaptation`` ``"coral"``, ``"dann"``, ``"pseudo_label"``,
        ``"info_max"``): those terms kept gaining target accuracy up to that
        budget on the shifts of ``benchmarks/domain_adaptation.py``.
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
        training batches and returns them in the same shape. Never applied
        when predicting, nor to the unlabelled target rows an
        ``adaptation`` trains on.
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
        ``"auto"``: CUDA when present, with channels_last batches and
        autocast to bf16 (fp16 with gradient scaling on V100 and T4, whose
        cuDNN has no bf16 convolutions; float32 on older GPUs); else the CPU
        (where training batches are channels_last too).
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
        ``fit`` continues from the fitted weights instead of reloading. The
        parameters that shape the network (``backbone``, ``weights``,
        ``layer``, ``image_size``, ``pooling``, ``head_hidden``, ``dropout``,
        ``preprocessing``, ``freeze_depth``) must stay as they were when it was
        built, here and for ``partial_fit``: a changed one raises ``ValueError``.

""".replace("%(min_steps)s", str(DEFAULT_MIN_STEPS)).replace(
    "%(adaptation_min_steps)s", str(ADAPTATION_MIN_STEPS))


TRANSFER_OBJECTIVE = """    **Transfer objective.** Training minimises, over the network weights θ,
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

"""

FITTED_ATTRIBUTES = """    n_epochs_ : int
        Epochs run in total.
    best_epoch_ : int or None
        Epoch (0-based, counted in ``history_``) whose weights were kept by
        early stopping; ``None`` without early stopping.
    n_frozen_stages_ : int
    layer_ : str
        Where the backbone was cut: ``"stageK"``, or ``"embedding"`` for the
        whole backbone (see ``layer``).
    bn_stats_ : {"pretrained", "update"}
        The BatchNorm setting used in training (see ``bn_stats``).
    head_init_ : {"solve", "zeros", "random"}
        How the head started (see ``head_init``).
    backbone_lr_scale_ : float
        The backbone learning-rate scale used in training (see ``backbone_lr_scale``).
    pixel_range_ : tuple of float
    n_features_in_ : int
        Only when ``X`` is a 2-D table.

"""


CLASSIFIER_ATTRIBUTES = """    classes_ : ndarray or list of ndarray
        Class labels; one array per task when ``y`` has several columns.
    n_outputs_ : int
        Number of tasks (columns of ``y``).
    net_ : TransferNet
        The trained network (backbone, pooling, dropout, head).
    history_ : list of dict
        Per epoch: ``epoch``, ``phase``, ``train_loss``, ``valid_loss``,
        ``valid_score``, ``lr``, ``seconds``.
    probe_net_ : TransferNet or None
        The network fine-tuning started from, averaged in predictions (see ``probe_ensemble``).
    mixup_ : float
        Mixup's Beta parameter used in training (0: none; see ``mixup``).
    test_time_augment_ : int
        Number of augmented views each prediction averages over beside the
        image itself (0: none; see ``test_time_augment``).
    test_time_views_ : ndarray of shape (n_views, 2, 3)
        The views' affine warps (``torch.nn.functional.affine_grid``'s
        ``theta``), drawn once from the training augmentation; ``n_views``
        is ``test_time_augment_``.
"""

CLASSIFIER_PARAMETERS = """    label_smoothing : float, default=0.0
        Cross-entropy label smoothing.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes (single-task ``y`` only), multiplied into
        ``sample_weight``.
    task_weights : array-like of shape (n_tasks,) or None, default=None
        Multi-task ``y`` only: the loss is ``sum_t task_weights[t] * L_t``,
        ``L_t`` being task ``t``'s mean cross-entropy over the samples labelled
        for it. A sample may lack a label for a task: mark it with
        ``missing_label`` and that task's loss skips it. With a source task and
        a target task, ``task_weights=[1, lam]`` minimises ``L_S + lam * L_T``
        literally. ``None``: all ones.
    missing_label : scalar or None, default=None
        Marks a missing label in ``y``: with several tasks, a sample may lack
        a label for some of them; in single-task ``y`` (and for every task),
        a row without any label is an unlabelled image, never a class: it
        is the target domain of ``adaptation``, learns from the ``teacher``,
        and is left out of training without either. ``None``: in multi-task ``y``, ``None`` and NaN entries
        are missing (use an object or float array); single-task ``y`` then has
        no missing labels (NaN raises). Set e.g. ``-1`` for integer labels,
        scikit-learn's semi-supervised convention.
    adaptation : {"adabn", "coral", "dann", "pseudo_label", "info_max", "auto"} or None, default=None
        Domain adaptation to the unlabelled rows (see ``missing_label`` and
        ``fit``'s ``sample_domain``), the target domain; the labelled rows
        are the source. ``"adabn"``: after training, the backbone's
        BatchNorm statistics are re-estimated on the target images.
        ``"coral"``: Deep CORAL, a loss aligning the covariances of the
        source and target features of each batch. ``"dann"``:
        domain-adversarial training (a domain classifier behind a
        gradient-reversal layer, its weight scheduled as in Ganin et al.,
        2016). ``"pseudo_label"``: self-training on the model's confident
        target predictions. ``"info_max"``: information maximisation (the IM
        loss of SHOT, Liang et al., 2020): confident target predictions
        whose mean is uniform, or the labelled rows' (weighted) class
        frequencies when a chi-square test finds them imbalanced (if the
        target's classes are balanced while the labelled rows' are not,
        lower ``adaptation_weight``).
        ``"auto"``: ``"info_max"``, the largest target gain with source
        accuracy kept within 0.03 on the shifts of
        ``benchmarks/domain_adaptation.py`` (docs/benchmarks.md); with
        several tasks, ``"coral"``. ``"pseudo_label"`` and ``"info_max"``
        need single-task ``y``. ``None``: no adaptation.
    adaptation_weight : float, default=1.0
        Weight of the adaptation loss term (``"coral"``, ``"dann"``,
        ``"pseudo_label"``, ``"info_max"``) in the training objective.
    teacher : fitted classifier or None, default=None
        Knowledge distillation (Hinton et al., 2015): any fitted
        single-task classifier with ``predict_proba`` and the same
        ``classes_`` (another ``FineTuneClassifier``, a
        ``Pipeline(PretrainedFeatureExtractor, LogisticRegression)``...),
        given the same ``X``. Its probabilities of every row are computed
        once per fit, in batches; the student learns from them on every row
        and from the labels on the labelled rows, so unlabelled rows (see
        ``missing_label``) teach through the teacher alone. The objective is
        ``(1 - distill_weight) * CE + distill_weight * distill_temperature**2
        * KL(teacher || student)``, both softened at the temperature. The
        teacher is used, never modified; ``clone`` (and so ``GridSearchCV``)
        shares it instead of unfitting it; pickles keep it (it is a
        parameter), ``save`` does not. Not with ``adaptation`` methods other
        than ``"adabn"``.
    distill_temperature : float, default=4.0
        Temperature ``tau`` that softens the teacher's and the student's
        probabilities in the distillation term.
    distill_weight : float in [0, 1], default=0.5
        Weight of the distillation term; the labels' cross-entropy gets
        ``1 - distill_weight``. ``1``: the labels are not used.
    probe_ensemble : "auto" or bool, default="auto"
        Predict with the mean of two networks' class probabilities: the
        fine-tuned network and the linear probe it started from (the
        pretrained backbone with the solved head, kept as ``probe_net_``).
        With few images, fine-tuning moves away from the probe in a
        direction the images barely determine; the average damps that
        noise. Measured on the 16 few-image cells of
        ``benchmarks/few_shot.py``: higher than the fine-tuned network alone
        in 10, lower in 4 (by at most 0.005), +0.005 on average
        (docs/benchmarks.md). It doubles the cost of predicting, not of
        training. ``"auto"``: on with few images
        (fewer than 10 batches of training rows) when the head is solved
        (``head_init_="solve"``), no ``adaptation`` (the probe never sees
        the target domain) and no ``teacher`` (a student is meant to be
        cheap). ``True`` solves the head (not with ``head_init="zeros"`` or
        ``"random"``). Training that goes on from a fitted network
        (``warm_start``, ``partial_fit`` after ``fit``) keeps that fit's
        probe (``probe_ensemble=False`` drops it); ``partial_fit`` from
        scratch keeps none. Early stopping and ``history_`` judge the
        fine-tuned network alone. With ``head_hidden``, the probe's hidden
        layers are random, under the solved last layer. As another
        estimator's ``teacher``, the classifier teaches with its fine-tuned
        network alone (students learned more from it).
    mixup : "auto" or float >= 0, default="auto"
        Mixup (Zhang et al., 2018): each training batch, after augmentation,
        is mixed with a shuffle of itself, ``lam * x_i + (1 - lam) * x_j``
        with ``lam ~ Beta(mixup, mixup)`` once per batch, and trained on
        ``lam * L(y_i) + (1 - lam) * L(y_j)`` (each sample keeps its
        weight). The network learns to move linearly between training
        images, so it cannot grow certain far from them: with few images,
        fine-tuning without it made confident errors where the images
        determined little (faces at 64 px). ``"auto"``: 0.2 with few images
        (fewer than 10 batches of training rows) unless the network ends at a
        map of stride 8 or less (Lite0 cut after stage 3, as ``layer="auto"``
        does at 17-32 px), else 0: there the backbone learns at the full rate
        (``backbone_lr_scale``) and mixup lost on the photograph crops
        (docs/benchmarks.md, "Mixup in few-image fits").
        0 with ``adaptation`` or a ``teacher``; a number > 0 beside a
        ``teacher`` or an adaptation loss on target batches (any method but
        ``"adabn"``) raises, since those read each image as it is. ``0``
        turns it off. The fitted ``mixup_`` is the value used.
        ``history_``'s training loss is the mixed loss.
    test_time_augment : "auto" or int >= 0, default="auto"
        Test-time augmentation: predictions average the class probabilities
        over each image and this many warped views of it, drawn once from
        the training augmentation (the same warps for every image, kept as
        ``test_time_views_``; so an image's prediction does not depend on the
        rest of its batch). With few images the fine-tuned network's answer
        for one image still depends on small shifts and zooms of it, which
        training on augmented images averaged over and one forward pass does
        not. With the probe ensemble, both networks see every view.
        ``"auto"``: 8 with few images (fewer than 10 batches of training
        rows; for ``partial_fit``, those of its first call, as for the other
        few-image settings) when ``augment`` is an affine warp
        (``"default"``, ``"flip"``, ``True`` or a :class:`RandomAffine`) and
        there is no ``adaptation`` or ``teacher``, else 0. Measured on issue
        14's few-image cells (two runs, three image sets): at or above the
        best logistic regression in 16 of 16 at 32 px and 18 of 18 at 64 px,
        against 13 and 17 in one pass (docs/benchmarks.md, "Test-time
        augmentation"). Predicting costs ``test_time_augment_ + 1`` forward
        passes of each network (twice that with the probe ensemble); training
        is unchanged, and early stopping, ``history_`` and what the
        classifier teaches as a ``teacher`` use single passes. A soup
        (:func:`fuse`) predicts with its first member's views. A number > 0
        needs an affine ``augment`` (a callable's views cannot be drawn once);
        ``0`` turns it off.
"""


def fill_docstring(doc):
    """An estimator docstring with the shared blocks filled in."""
    return (doc.replace("%(shared_parameters)s", SHARED_PARAMETERS)
            .replace("%(transfer_objective)s", TRANSFER_OBJECTIVE)
            .replace("%(fitted_attributes)s", FITTED_ATTRIBUTES)
            .replace("%(classifier_parameters)s", CLASSIFIER_PARAMETERS)
            .replace("%(classifier_attributes)s", CLASSIFIER_ATTRIBUTES))
