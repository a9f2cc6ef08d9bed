"""GridSearchCV over freeze_depth x reg_lambda (L2-SP), results as a heatmap.

How many stages to keep frozen and how strongly to pull the trained ones toward
the pretrained weights are chosen by cross-validation like any other
hyper-parameters.
"""

import os
import pathlib

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sktransfer import FineTuneClassifier

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
# the fast mode (tests) trains max_epochs epochs, without the default minimum of 100 optimizer steps
BUDGET = dict(min_steps=0) if FAST else {}
OUT = pathlib.Path(os.environ.get("SKTRANSFER_OUTPUT", pathlib.Path(__file__).parents[1] / "docs" / "figures"))

X, y = load_digits(return_X_y=True)
X, y = (X[:90], y[:90]) if FAST else (X[:300], y[:300])
grid = {"freeze_depth": [0, 2, "all"], "reg_lambda": [0.0, 0.1]}
if FAST:
    grid = {"freeze_depth": [2, "all"], "reg_lambda": [0.0, 0.1]}
search = GridSearchCV(
    FineTuneClassifier(image_size=32 if FAST else 48, max_epochs=2 if FAST else 5, batch_size=16, random_state=0, **BUDGET),
    grid, cv=StratifiedKFold(2, shuffle=True, random_state=0),
)
search.fit(X, y)
print(f"best parameters {search.best_params_}, cross-validated accuracy {search.best_score_:.3f}")

depths, lambdas = grid["freeze_depth"], grid["reg_lambda"]
scores = np.array(search.cv_results_["mean_test_score"]).reshape(len(depths), len(lambdas))
for depth, row in zip(depths, scores):
    print(f"freeze_depth={depth!s:>4}: " + "  ".join(f"lambda={lam:<5} accuracy {s:.3f}" for lam, s in zip(lambdas, row)))
fig, ax = plt.subplots(figsize=(4.5, 3.5))
image = ax.imshow(scores, cmap="viridis")
ax.set_xticks(range(len(lambdas)), [str(v) for v in lambdas])
ax.set_yticks(range(len(depths)), [str(v) for v in depths])
ax.set_xlabel("reg_lambda (L2-SP)")
ax.set_ylabel("freeze_depth")
for (i, j), value in np.ndenumerate(scores):
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w")
fig.colorbar(image, label="CV accuracy")
ax.set_title("GridSearchCV on 300 digits")
OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / "grid_freeze_lambda.png", dpi=100, bbox_inches="tight")
plt.close(fig)
