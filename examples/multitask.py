"""Source and target at once: min L_S + lambda * L_T with two heads on one backbone.

Source task: the digit's identity, labelled for digits 0-4 only (missing, NaN,
for 5-9). Target task, a different one: is the digit 7 or more? labelled for
just 40 images. ``task_weights=[1, lam]`` makes FineTuneClassifier minimise
L_S + lam * L_T literally; the target-only model sees the same 40 labels alone.
Whether the source task helps is an empirical question: the printout says
which won on this run (the source here knows nothing of digits 7-9, and the
target head sees only one or two labels per batch of the joint fit).
"""

import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sktransfer import FineTuneClassifier

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
# the fast mode (tests) trains max_epochs epochs, without the default minimum of 100 optimizer steps
BUDGET = dict(min_steps=0) if FAST else {}

X, digit = load_digits(return_X_y=True)
X_train, X_test, d_train, d_test = train_test_split(
    X, digit, train_size=200 if FAST else 600, test_size=100 if FAST else 500, stratify=digit, random_state=0
)
big_test = (d_test >= 7).astype(float)
source = np.where(d_train < 5, d_train, np.nan)  # digit identity, 0-4 only
target = np.full(len(d_train), np.nan)  # "7 or more?", 40 labels
rng = np.random.default_rng(0)
labelled = rng.choice(len(d_train), 40, replace=False)
target[labelled] = d_train[labelled] >= 7
size, epochs = (32, 2) if FAST else (48, 8)

only_target = FineTuneClassifier(image_size=size, max_epochs=epochs * 3, batch_size=16, random_state=0, **BUDGET)
only_target.fit(X_train[labelled], target[labelled])
print(f"target only (40 labels):            accuracy {only_target.score(X_test, big_test):.3f}")
for lam in (0.5, 2.0):
    joint = FineTuneClassifier(image_size=size, max_epochs=epochs, task_weights=[1.0, lam], random_state=0, **BUDGET)
    joint.fit(X_train, np.column_stack([source, target]))
    accuracy = np.mean(joint.predict(X_test)[:, 1] == big_test)
    print(f"L_S + {lam} * L_T (source 0-4 + 40):  accuracy {accuracy:.3f}")
print("(compare: the joint objective is worth it only where it beats the target-only line)")
