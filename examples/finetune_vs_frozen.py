"""Fine-tuning vs frozen embeddings vs raw pixels on the digits, with training curves.

Three ways to learn the digits from 600 labelled images: a linear model on the raw
pixels, a linear model on frozen ImageNet embeddings (feature extraction), and the
whole network fine-tuned (FineTuneClassifier with early stopping). The training
curves of the fine-tuning are plotted from ``history_``.
"""

import os
import pathlib
import time

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import (
    FineTuneClassifier,
    PretrainedFeatureExtractor,
    TrainingHistoryDisplay,
)

FAST = bool(os.environ.get("SKTRANSFER_FAST"))  # the test suite runs examples in a fast mode
OUT = pathlib.Path(os.environ.get("SKTRANSFER_OUTPUT", pathlib.Path(__file__).parents[1] / "docs" / "figures"))

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, train_size=150 if FAST else 600, test_size=150 if FAST else 600, stratify=y, random_state=0
)
size = 32 if FAST else 48
models = {
    "raw pixels + LogisticRegression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
    "frozen embeddings (stage5) + LogisticRegression": make_pipeline(
        PretrainedFeatureExtractor(image_size=size, layer="stage5"), StandardScaler(),
        LogisticRegression(max_iter=5000, C=0.1),
    ),
    "fine-tuned (FineTuneClassifier)": FineTuneClassifier(
        image_size=size, max_epochs=2 if FAST else 12, early_stopping=True, validation_fraction=0.15,
        n_iter_no_change=4, random_state=0,
    ),
}
for name, model in models.items():
    start = time.perf_counter()
    model.fit(X_train, y_train)
    print(f"{name:50s} accuracy {model.score(X_test, y_test):.3f}   ({time.perf_counter() - start:5.1f} s)")

clf = models["fine-tuned (FineTuneClassifier)"]
print(f"best epoch: {clf.best_epoch_} of {clf.n_epochs_} (its weights are the ones kept)")
display = TrainingHistoryDisplay.from_estimator(clf)
display.figure_.suptitle("FineTuneClassifier on 600 digits")
OUT.mkdir(parents=True, exist_ok=True)
display.figure_.savefig(OUT / "finetune_curves.png", dpi=100, bbox_inches="tight")
plt.close("all")
