"""Knowledge transfer between models: distil a teacher into a cheaper student, then fuse runs.

Few labelled digits and many unlabelled ones. The teacher sees larger images (64 px);
the student sees 32 px images, where Lite0 is cut after stage 3, so it predicts several
times faster. The student learns from the labels and from the teacher's softened
probabilities on every image, the unlabelled ones included (missing_label=-1).
Then two runs of the student that differ only in their seed are averaged in weight
space (a model soup, sktransfer.fuse).
"""

import os
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sktransfer import FineTuneClassifier, fuse

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
BUDGET = dict(min_steps=30) if FAST else {}

images, y = load_digits(return_X_y=True)
images = images.reshape(-1, 8, 8)
rest, X_test, y_rest, y_test = train_test_split(images, y, test_size=200 if FAST else 500, stratify=y,
                                                random_state=0)
X_lab, X_unl, y_lab, _ = train_test_split(rest, y_rest, train_size=50, stratify=y_rest, random_state=0)
X_unl = X_unl[:200 if FAST else 1000]


def report(name, model):
    start = time.perf_counter()
    accuracy = model.score(X_test, y_test)
    speed = len(X_test) / (time.perf_counter() - start)
    print(f"{name}: accuracy {accuracy:.3f}, {speed:.0f} images/s to predict")


teacher = FineTuneClassifier(image_size=48 if FAST else 64, random_state=0, **BUDGET).fit(X_lab, y_lab)
report(f"teacher ({teacher.preprocessing_.image_size} px, 50 labels)", teacher)
alone = FineTuneClassifier(image_size=32, random_state=0, **BUDGET).fit(X_lab, y_lab)
report("student (32 px, 50 labels)", alone)

# every unlabelled image carries the teacher's knowledge: label it -1
X_fit = np.concatenate([X_lab, X_unl])
y_fit = np.concatenate([y_lab, np.full(len(X_unl), -1)])
students = [
    FineTuneClassifier(image_size=32, missing_label=-1, teacher=teacher, random_state=seed, **BUDGET).fit(X_fit, y_fit)
    for seed in (0, 1)
]
report("student distilled (32 px, 50 labels + unlabelled)", students[0])
report("second distilled run (random_state=1)", students[1])
# runs that learned their BatchNorm statistics (10 batches or more) have them re-estimated on images
learned = students[0].bn_stats_ == "update"
report("soup of the two distilled runs", fuse(students, X=X_fit if learned else None))
