"""Parameter fusion: theta = alpha * theta_finetuned + (1 - alpha) * theta_pretrained.

One fine-tuning per alpha (same random_state, so the same fine-tuned weights),
scored on the digits and on a shifted copy of them (shrunk and moved). alpha=1 is
plain fine-tuning, alpha=0 the pretrained backbone under the new head (trained on
fine-tuned features, so it no longer matches them). Measure before you fuse: on
digits, far from ImageNet photographs, every step toward the pretrained weights
costs accuracy here, shifted digits included.
"""

import os
import pathlib

import matplotlib.pyplot as plt
import numpy as np
from scipy.ndimage import affine_transform
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sktransfer import FineTuneClassifier

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
# the fast mode (tests) trains max_epochs epochs, without the default minimum of 100 optimizer steps
BUDGET = dict(min_steps=0) if FAST else {}
OUT = pathlib.Path(os.environ.get("SKTRANSFER_OUTPUT", pathlib.Path(__file__).parents[1] / "docs" / "figures"))

images, y = load_digits(return_X_y=True)
images = images.reshape(-1, 8, 8)
X_train, X_test, y_train, y_test = train_test_split(
    images, y, train_size=120 if FAST else 400, test_size=100 if FAST else 500, stratify=y, random_state=0
)
# distribution shift: each test digit shrunk to 75 % and moved by a pixel
shifted = np.stack([affine_transform(img, np.diag([1 / 0.75] * 2), offset=(-1.5, -1.0), order=1) for img in X_test])

alphas = [0.0, 0.5, 1.0] if FAST else [0.0, 0.25, 0.5, 0.75, 1.0]
clean, moved = [], []
for alpha in alphas:
    clf = FineTuneClassifier(image_size=32 if FAST else 48, max_epochs=1 if FAST else 4, fusion_alpha=alpha,
                             random_state=0, pixel_range=(0, 16), **BUDGET)
    clf.fit(X_train, y_train)
    clean.append(clf.score(X_test, y_test))
    moved.append(clf.score(shifted, y_test))
    print(f"fusion_alpha={alpha:.2f}: accuracy {clean[-1]:.3f} on the test digits, {moved[-1]:.3f} on shifted ones")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(alphas, clean, marker="o", label="test digits")
ax.plot(alphas, moved, marker="s", label="shrunk and moved")
ax.set_xlabel("fusion_alpha (0 = pretrained, 1 = fine-tuned)")
ax.set_ylabel("accuracy")
ax.legend()
ax.grid(alpha=0.3)
OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / "fusion.png", dpi=100, bbox_inches="tight")
plt.close(fig)
