"""Real image sets available offline, for the hand-run benchmarks (not part of the package).

* ``digits``: scikit-learn's 1797 8x8 grey digits, 10 classes (a far domain for
  an ImageNet network: tiny, upsampled, grey).
* ``photo_crops``: grey 64x64 crops of twelve of scikit-image's bundled
  photographs and textures, labelled by the photograph they come from. The crop
  position and side (48-128 source pixels) are random, so the class is a matter
  of texture and content, not of pixel positions (a near domain).
* ``faces``: scikit-image's ``lfw_subset``, 200 grey 25x25 images, faces
  against non-faces (binary).

Each loader returns ``(X, y)`` with ``X`` a float or uint8 array of shape
``(n, H, W)``.
"""

import numpy as np

PHOTOS = (
    "astronaut", "brick", "camera", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "rocket", "chelsea",
)


def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X.reshape(-1, 8, 8) / 16.0, y


def photo_crops(n_per_class=150, size=64, seed=0):
    from PIL import Image
    from skimage import data
    from skimage.color import rgb2gray

    rng = np.random.RandomState(seed)
    X, y = [], []
    for label, name in enumerate(PHOTOS):
        img = getattr(data, name)()
        grey = rgb2gray(img[..., :3]) if img.ndim == 3 else img / 255.0
        grey = (255 * grey).astype(np.uint8)
        h, w = grey.shape
        for _ in range(n_per_class):
            side = rng.randint(48, min(129, h, w))
            top, left = rng.randint(0, h - side + 1), rng.randint(0, w - side + 1)
            crop = Image.fromarray(grey[top:top + side, left:left + side])
            X.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
            y.append(label)
    order = rng.permutation(len(y))
    return np.stack(X)[order], np.asarray(y)[order]


def faces():
    from skimage import data

    X = data.lfw_subset()
    y = np.r_[np.ones(100, dtype=int), np.zeros(100, dtype=int)]
    return X, y


SETS = {"digits": digits, "photo_crops": photo_crops, "faces": faces}
