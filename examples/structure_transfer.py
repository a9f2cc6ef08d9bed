"""Structure transfer: combine layers, or backbones, with FeatureUnion.

Several views of the same images side by side: two stages of one backbone, or
two backbones (the ImageNet one and one fine-tuned on a source task, here digits
0-4), each feeding one LogisticRegression on the digits 5-9.
"""

import os

from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import FineTuneClassifier, PretrainedFeatureExtractor

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
# the fast mode (tests) trains max_epochs epochs, without the default minimum of 100 optimizer steps
BUDGET = dict(min_steps=0) if FAST else {}
size = 32 if FAST else 64

X, y = load_digits(return_X_y=True)
X_source, y_source = X[y < 5], y[y < 5]
X_target, y_target = X[y >= 5][:100 if FAST else 400], y[y >= 5][:100 if FAST else 400]
source = FineTuneClassifier(image_size=size, max_epochs=1 if FAST else 4, random_state=0, **BUDGET)
source.fit(X_source[:150] if FAST else X_source, y_source[:150] if FAST else y_source)
tuned = source.export_backbone()  # keeps its weights through clone, unlike the fitted estimator


def linear(features):
    return make_pipeline(features, StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))


candidates = {
    "ImageNet stage4": PretrainedFeatureExtractor(image_size=size, layer="stage4"),
    "ImageNet stage6": PretrainedFeatureExtractor(image_size=size, layer="stage6"),
    "union of stage4 + stage6": FeatureUnion([
        ("stage4", PretrainedFeatureExtractor(image_size=size, layer="stage4")),
        ("stage6", PretrainedFeatureExtractor(image_size=size, layer="stage6")),
    ]),
    "digits-0-4 backbone, embedding": PretrainedFeatureExtractor(backbone=tuned, image_size=size),
    "union of ImageNet stage6 + digits-0-4 backbone": FeatureUnion([
        ("imagenet", PretrainedFeatureExtractor(image_size=size, layer="stage6")),
        ("digits", PretrainedFeatureExtractor(backbone=tuned, image_size=size)),
    ]),
}
for name, features in candidates.items():
    score = cross_val_score(linear(features), X_target, y_target, cv=3).mean()
    print(f"digits 5-9, {name:48s} cross-validated accuracy {score:.3f}")
