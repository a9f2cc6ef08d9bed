"""Source to target: train on digits 0-4, transfer to 5-9 with 10 labels per class.

The classic pretrain-then-fine-tune workflow, with our own source task: a
FineTuneClassifier learns digits 0-4 from all their images; its backbone
(``export_backbone()``) then starts a new classifier for digits 5-9 that sees
only 10 labelled images per class. Baselines on the same 50 labels: the
ImageNet backbone directly, and the same network from random weights.
"""

import os

import numpy as np
from sklearn.datasets import load_digits

from sktransfer import FineTuneClassifier

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
# the fast mode (tests) trains max_epochs epochs, without the default minimum of 100 optimizer steps
BUDGET = dict(min_steps=0) if FAST else {}

X, y = load_digits(return_X_y=True)
source = y < 5
X_source, y_source = X[source], y[source]
rng = np.random.default_rng(0)
target_idx = np.flatnonzero(~source)
labelled = np.concatenate([rng.choice(target_idx[y[target_idx] == c], 10, replace=False) for c in range(5, 10)])
test = np.setdiff1d(target_idx, labelled)
if FAST:
    X_source, y_source, test = X_source[:150], y_source[:150], test[:100]
size = 32 if FAST else 48

source_clf = FineTuneClassifier(image_size=size, max_epochs=1 if FAST else 5, random_state=0, **BUDGET)
source_clf.fit(X_source, y_source)
print(f"source model (digits 0-4), accuracy on its training images {source_clf.score(X_source, y_source):.3f}")

target = dict(image_size=size, max_epochs=3 if FAST else 20, batch_size=16, random_state=0, **BUDGET)
runs = {
    "transferred from the digits 0-4 model": FineTuneClassifier(backbone=source_clf.export_backbone(), **target),
    "ImageNet backbone, fine-tuned": FineTuneClassifier(**target),
    "same network from random weights": FineTuneClassifier(weights=None, **target),
}
for name, clf in runs.items():
    clf.fit(X[labelled], y[labelled])
    print(f"digits 5-9, 50 labels: {name:40s} accuracy {clf.score(X[test], y[test]):.3f}")
