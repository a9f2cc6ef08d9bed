"""mixup: few-image fits train on convex combinations of pairs of images and of their losses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sktransfer import FineTuneClassifier
from sktransfer.training import _trainer
from sktransfer.training._mixup import check_mixup, mix_batch, mixed_loss, resolve_mixup
from sktransfer.training._objectives import classification_loss


def test_a_mixed_batch_is_the_convex_combination_with_a_shuffle_of_itself():
    x = torch.randn(6, 3, 4, 4)
    torch.manual_seed(0)
    mixed, (lam, perm) = mix_batch(x, 0.2)
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])
    torch.manual_seed(0)
    again, (lam_again, perm_again) = mix_batch(x, 0.2)  # torch's generator, seeded by the fit, decides
    assert lam_again == lam and torch.equal(perm_again, perm) and torch.equal(again, mixed)


@pytest.mark.parametrize("alpha, near_an_end", [(0.2, (0.55, 0.85)), (4.0, (0.0, 0.05))])
def test_lam_is_drawn_from_beta_alpha_alpha(alpha, near_an_end):
    """Beta(0.2, 0.2) puts about two thirds of lam within 0.1 of 0 or 1 (mostly one image, a
    little of another); Beta(4, 4) almost never does."""
    torch.manual_seed(0)
    lams = np.array([mix_batch(torch.zeros(4, 1), alpha)[1][0] for _ in range(500)])
    share = np.mean(np.minimum(lams, 1 - lams) < 0.1)
    assert near_an_end[0] <= share <= near_an_end[1]
    assert abs(lams.mean() - 0.5) < 0.06


def test_the_mixed_loss_weighs_each_label_by_its_share_and_keeps_the_sample_weights():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    y, w = torch.tensor([0, 1, 2, 1]), torch.tensor([1.0, 2.0, 1.0, 3.0])
    perm, lam = torch.tensor([2, 0, 3, 1]), 0.3

    def loss(out, target, weight):
        return classification_loss(out, target, weight, [3], [1.0])

    def by_hand(target, weight):
        return (F.cross_entropy(logits, target, reduction="none") * weight).sum() / weight.sum()

    expected = lam * by_hand(y, w) + (1 - lam) * by_hand(y[perm], w[perm])
    torch.testing.assert_close(mixed_loss(loss, logits, y, w, (lam, perm)), expected)


@pytest.mark.parametrize("mixup, n_train, shallow, adapting_or_distilling, expected", [
    ("auto", 20, False, False, 0.2), ("auto", 319, False, False, 0.2), ("auto", 320, False, False, 0.0),
    ("auto", 20, True, False, 0.0), ("auto", 20, False, True, 0.0), (0.5, 5000, True, False, 0.5),
    (0, 20, False, False, 0.0),
])
def test_auto_mixes_few_images_unless_the_network_is_shallow(mixup, n_train, shallow, adapting_or_distilling,
                                                            expected):
    assert resolve_mixup(mixup, n_train, 32, shallow, adapting_or_distilling) == expected


def test_training_mixes_batches_with_the_mixup_the_fit_records(digits, monkeypatch):
    _, X, y = digits
    alphas = []
    monkeypatch.setattr(_trainer, "mix_batch", lambda x, alpha: (alphas.append(alpha), mix_batch(x, alpha))[1])

    def fit(size, **kw):
        alphas.clear()
        clf = FineTuneClassifier(image_size=size, max_epochs=2, min_steps=0, random_state=0, **kw).fit(X[:20], y[:20])
        return clf.mixup_, list(alphas)

    assert fit(64) == (0.2, [0.2, 0.2])  # one mix per optimizer step
    assert fit(32) == (0.0, [])
    assert fit(32, mixup=0.3) == (0.3, [0.3, 0.3])
    # frozen stages without augmentation are normally computed once; mixing needs the images
    assert fit(32, mixup=0.3, augment=False, freeze_depth=2) == (0.3, [0.3, 0.3])


def test_a_task_missing_either_label_of_a_pair_counts_for_neither():
    torch.manual_seed(0)
    logits = torch.randn(4, 5)  # two tasks: 2 and 3 classes
    y = torch.tensor([[0, 2], [1, -1], [-1, 0], [1, 1]])
    w, perm, lam = torch.ones(4), torch.tensor([1, 0, 3, 2]), 0.7

    def loss(out, target, weight):
        return classification_loss(out, target, weight, [2, 3], [1.0, 1.0])

    # pairs (0, 1) and (2, 3): task 2 is missing in row 1, task 1 in row 2
    first = torch.tensor([[0, -1], [1, -1], [-1, 0], [-1, 1]])
    second = torch.tensor([[1, -1], [0, -1], [-1, 1], [-1, 0]])
    expected = lam * loss(logits, first, w) + (1 - lam) * loss(logits, second, w)
    torch.testing.assert_close(mixed_loss(loss, logits, y, w, (lam, perm)), expected)
    assert not torch.equal(mixed_loss(loss, logits, y, w, (lam, perm)),
                           lam * loss(logits, y, w) + (1 - lam) * loss(logits, y[perm], w))


def test_mixup_trains_a_less_certain_network_away_from_the_training_images(digits):
    """What mixup is for: between training images the network answers with mixed certainty, so on
    unseen digits its confidence is lower than without mixup (same draws otherwise: the network
    alone, without the probe)."""
    _, X, y = digits
    fit = lambda **kw: FineTuneClassifier(image_size=32, max_epochs=1, min_steps=30, random_state=0,
                                          probe_ensemble=False, **kw).fit(X[:40], y[:40])
    mixed, plain = fit(mixup=0.2), fit(mixup=0)
    assert mixed.mixup_ == 0.2 and plain.mixup_ == 0.0
    unseen = X[1000:1200]
    assert mixed.predict_proba(unseen).max(1).mean() < plain.predict_proba(unseen).max(1).mean()
    again = fit(mixup=0.2)
    np.testing.assert_array_equal(again.predict_proba(unseen), mixed.predict_proba(unseen))


@pytest.mark.parametrize("params, message", [
    ({"adaptation": "coral"}, "adaptation"),
    ({"teacher": "fitted"}, "teacher"),
])
def test_mixup_asked_for_beside_adaptation_or_a_teacher_is_refused(digits, params, message):
    _, X, y = digits
    if params.get("teacher") == "fitted":
        params = {"teacher": FineTuneClassifier(image_size=32, max_epochs=1, min_steps=0,
                                                random_state=0).fit(X[:20], y[:20])}
    clf = FineTuneClassifier(image_size=64, max_epochs=1, min_steps=0, mixup=0.4, random_state=0, **params)
    with pytest.raises(ValueError, match=f"mixup=0.4 cannot be combined with .*{message}.*mixup='auto'"):
        clf.fit(X[:20], y[:20])
    assert clf.set_params(mixup="auto").fit(X[:20], y[:20]).mixup_ == 0.0


def test_mixup_is_refused_in_partial_fit_beside_a_teacher_and_when_infinite(digits):
    _, X, y = digits
    teacher = FineTuneClassifier(image_size=32, max_epochs=1, min_steps=0, random_state=0).fit(X[:20], y[:20])
    student = FineTuneClassifier(image_size=32, mixup=0.2, teacher=teacher, random_state=0)
    with pytest.raises(ValueError, match="teacher"):
        student.partial_fit(X[:20], y[:20], classes=np.arange(10))
    with pytest.raises(ValueError, match=r"'mixup' parameter .* range \[0.0, inf\)\. Got inf"):
        FineTuneClassifier(image_size=32, mixup=np.inf).fit(X[:20], y[:20])
    check_mixup(0.4, False, False)  # alone, or beside AdaBN (no target rows in the batches): accepted
