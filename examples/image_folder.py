"""A folder of image files plus tabular columns, through ColumnTransformer.

A pandas DataFrame holds one column of image paths and ordinary columns; the
ColumnTransformer sends the paths to PretrainedFeatureExtractor (files are read
one at a time, never all at once) and the numbers to StandardScaler. Images:
crops of scikit-image's sample photographs written to a temporary folder; the
label is the photograph a crop comes from.
"""

import os
import tempfile

import numpy as np
import pandas as pd
from PIL import Image
from skimage import data
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedFeatureExtractor

FAST = bool(os.environ.get("SKTRANSFER_FAST"))
names = ["chelsea", "coffee", "rocket", "astronaut"]
rng = np.random.default_rng(0)
rows = []
with tempfile.TemporaryDirectory() as folder:
    for label, name in enumerate(names):
        photo = getattr(data, name)()
        for i in range(10 if FAST else 40):
            size = int(rng.integers(48, 96))
            r, c = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
            path = os.path.join(folder, f"{name}_{i:03d}.jpg")
            crop = photo[r:r + size, c:c + size]
            Image.fromarray(crop).save(path)
            rows.append({"path": path, "mean_brightness": crop.mean() / 255, "side_px": size, "label": name})
    frame = pd.DataFrame(rows)
    print(frame.head(3).to_string(index=False))
    train, test = train_test_split(frame, test_size=0.3, stratify=frame["label"], random_state=0)
    model = make_pipeline(
        ColumnTransformer([
            ("image", PretrainedFeatureExtractor(image_size=64), "path"),
            ("numbers", StandardScaler(), ["mean_brightness", "side_px"]),
        ]),
        LogisticRegression(max_iter=3000, C=0.1),
    )
    model.fit(train, train["label"])
    print(f"photograph of origin, {len(test)} test crops: accuracy {model.score(test, test['label']):.3f}")
    numbers_only = make_pipeline(StandardScaler(), LogisticRegression()).fit(
        train[["mean_brightness", "side_px"]], train["label"])
    print(f"tabular columns alone: accuracy {numbers_only.score(test[['mean_brightness', 'side_px']], test['label']):.3f}")
