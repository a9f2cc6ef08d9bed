"""Quickstart: pretrained embeddings + LogisticRegression on the digits, offline.

Runs on the embedded EfficientNet-Lite0 ImageNet weights (no download) in
well under two minutes on two CPU cores.
"""

import os
import time

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor

FAST = bool(os.environ.get("SKTRANSFER_FAST"))  # the test suite runs examples in a fast mode

X, y = load_digits(return_X_y=True)  # 1797 grey 8x8 images as rows of 64 pixels in 0..16
if FAST:
    X, y = X[:300], y[:300]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)

models = {
    "raw pixels": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
    # the pooled penultimate embedding (1280 features)
    "embedding (last layer)": make_pipeline(
        PretrainedFeatureExtractor(image_size=128), StandardScaler(), LogisticRegression(max_iter=5000, C=0.1)
    ),
    # digits are far from ImageNet: a mid-level stage transfers better
    "embedding (stage5)": make_pipeline(
        PretrainedFeatureExtractor(image_size=128, layer="stage5"), StandardScaler(),
        LogisticRegression(max_iter=5000, C=0.1),
    ),
}
for name, model in models.items():
    start = time.perf_counter()
    model.fit(X_train, y_train)
    accuracy = model.score(X_test, y_test)
    print(f"{name:24s} accuracy {accuracy:.3f}   ({time.perf_counter() - start:5.1f} s)")
