"""Choosing a layer: a linear model on the embedding of every stage of the backbone.

One extractor returns all stages at once (``layer=[...]``, a single pass of the
network); the columns of each stage are then scored separately with
cross-validated LogisticRegression. Digits are far from ImageNet photographs: a
middle stage transfers better than the last one.
"""

import os
import pathlib

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor, load_backbone

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
OUT = pathlib.Path(os.environ.get("SKTRANSFER_OUTPUT", pathlib.Path(__file__).parents[1] / "docs" / "figures"))

X, y = load_digits(return_X_y=True)
X, y = (X[:200], y[:200]) if FAST else (X[:900], y[:900])
stages = [f"stage{k}" for k in range(len(load_backbone().stages))]
extractor = PretrainedFeatureExtractor(image_size=48 if FAST else 96, layer=stages).fit(X)
features = extractor.transform(X)
bounds = np.cumsum([0, *extractor.layer_widths_])
scores = []
for k, stage in enumerate(stages):
    block = features[:, bounds[k]:bounds[k + 1]]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
    scores.append(cross_val_score(model, block, y, cv=3).mean())
    print(f"{stage}: {block.shape[1]:5d} features, cross-validated accuracy {scores[-1]:.3f}")
best = int(np.argmax(scores))
print(f"best layer: {stages[best]} (accuracy {scores[best]:.3f})")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(range(len(stages)), scores, marker="o")
ax.set_xticks(range(len(stages)), stages, rotation=45)
ax.set_ylabel("3-fold CV accuracy")
ax.set_title("LogisticRegression on each stage's pooled embedding (digits)")
ax.grid(alpha=0.3)
OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / "choose_layer.png", dpi=100, bbox_inches="tight")
plt.close(fig)
