"""Every accepted input kind becomes an :class:`ImageSource` that yields batches.

Accepted ``X``:

* numpy arrays ``(N, H, W)`` (grey), ``(N, H, W, C)`` with C in {1, 3, 4},
  or unambiguous ``(N, C, H, W)``; torch tensors ``(N, C, H, W)`` or ``(N, H, W)``;
* 2-D numeric tables ``(N, F)`` (numpy, pandas, lists of rows): each row is
  one image of shape ``input_shape``. Without ``input_shape`` a row of F values
  is a ``sqrt(F) x sqrt(F)`` grey image when F is a perfect square, else a
  ``1 x F`` grey strip (so generic scikit-learn tooling works on any table);
* lists, tuples, 1-D object arrays or pandas Series of file paths (decoded
  lazily, one batch at a time), of PIL images, or of arrays of mixed sizes;
* a one-column pandas DataFrame of paths (what ``ColumnTransformer`` passes).

Pixel values: ``uint8`` is divided by 255 and ``uint16`` by 65535; other
dtypes are mapped with a value range ``(lo, hi)`` to [0, 1] (see
``pixel_range`` of the estimators). Inputs are never modified.
"""

from __future__ import annotations

import math
import os
import warnings
from numbers import Number

import numpy as np
import torch

try:  # pandas is optional
    import pandas as pd
except ImportError:  # pragma: no cover
    pd = None

from sklearn.utils.validation import check_array, validate_data

_FIXED_SCALES = {"uint8": 255.0, "uint16": 65535.0}


def _dtype_name(array):
    if isinstance(array, np.ndarray):
        return array.dtype.name  # "uint16" in either byte order
    return str(array.dtype).replace("torch.", "")


class ImageSource:
    """A sized collection of images that yields tensors: uint8 (0-255) or float32 in [0, 1]."""

    #: numeric arrays report their raw value range; files and PIL images are uint8
    value_range = None
    #: pixels per image where whole batches reach the device at full size (arrays); None where
    #: images are resized first or prepared in small groups (files, PIL images, mixed sizes)
    input_pixels = None

    def __len__(self):
        raise NotImplementedError

    def batch(self, indices, draft_side=None):
        """Images at ``indices``: a (b, C, H, W) tensor or a list of (C, H, W) tensors, uint8 or
        float32 in [0, 1] (:func:`~sktransfer.data._preprocessing.prepare_batch` takes both).

        ``draft_side``: JPEG files may be decoded at a reduced scale whose sides
        are all at least this (see ``Preprocessing.jpeg_draft``); ``None``: full size.
        """
        raise NotImplementedError

    @property
    def decodes_files(self):
        """True when batches are decoded from image files (worth worker processes)."""
        return False


def _scale(array, pixel_range):
    """Numeric array or tensor -> CPU tensor: uint8 as it is (0-255; a view, never written to),
    any other dtype float32 in [0, 1] (a fresh copy). uint8 is scaled with the normalisation."""
    if _dtype_name(array) == "uint8":
        if isinstance(array, torch.Tensor):
            return array.detach().to("cpu")
        if not array.flags.writeable or any(step < 0 for step in array.strides):
            array = array.copy(order="K")  # torch views neither read-only nor reversed arrays
        return torch.from_numpy(array)
    if isinstance(array, torch.Tensor):
        tensor = array.detach().to("cpu", torch.float32, copy=True)
    else:  # numpy converts any byte order; torch reads only the machine's
        tensor = torch.from_numpy(np.array(array, dtype=np.float32))
    scale = _FIXED_SCALES.get(_dtype_name(array))
    if scale is not None:
        return tensor / scale
    lo, hi = pixel_range
    if (lo, hi) == (0.0, 1.0):
        return tensor
    return (tensor - lo) / (hi - lo)


class ArraySource(ImageSource):
    """Numeric (N, C, H, W) view of an array or tensor (the caller's object is not copied up front)."""

    def __init__(self, data, pixel_range):
        _check_not_empty(data.shape[2:])
        self.data = data  # (N, C, H, W), numpy or torch
        self.pixel_range = pixel_range
        fixed = _dtype_name(data) in _FIXED_SCALES
        self.value_range = None if fixed or len(data) == 0 else _minmax(data)
        self.input_pixels = math.prod(data.shape[2:])

    def __len__(self):
        return len(self.data)

    def batch(self, indices, draft_side=None):
        return _scale(self.data[indices], self.pixel_range)


class SubsetSource(ImageSource):
    """The images of ``source`` at ``indices`` (for instance, those no cache holds)."""

    def __init__(self, source, indices):
        self.source = source
        self.indices = np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def batch(self, indices, draft_side=None):
        return self.source.batch(self.indices[indices], draft_side)

    @property
    def decodes_files(self):
        return self.source.decodes_files

    @property
    def input_pixels(self):
        return self.source.input_pixels


def _minmax(data):
    if isinstance(data, torch.Tensor):
        return float(data.min()), float(data.max())
    return float(np.min(data)), float(np.max(data))


class ListSource(ImageSource):
    """Items decoded one by one: paths, PIL images, or arrays of mixed sizes."""

    def __init__(self, items, pixel_range):
        self.items = items
        self.pixel_range = pixel_range
        arrays = [it for it in items if isinstance(it, (np.ndarray, torch.Tensor))]
        if arrays:
            ranges = [_minmax(a) for a in arrays if _dtype_name(a) not in _FIXED_SCALES]
            if ranges:
                self.value_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))

    def __len__(self):
        return len(self.items)

    @property
    def decodes_files(self):
        return any(isinstance(it, (str, os.PathLike)) for it in self.items)

    def batch(self, indices, draft_side=None):
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self.items)))
        return [self._decode(self.items[i], draft_side) for i in indices]

    def _decode(self, item, draft_side=None):
        if isinstance(item, (str, os.PathLike)):
            return _scale(_read_image(item, draft_side), None)
        if is_pil(item):
            return _scale(_pil_to_array(item), None)
        if isinstance(item, torch.Tensor):
            return _scale(_to_nchw(item[None], torch_layout=True)[0], self.pixel_range)
        return _scale(_to_nchw(np.asarray(item)[None], torch_layout=False)[0], self.pixel_range)


def is_pil(obj):
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Image.Image)


def _pil_to_array(img):
    if img.mode == "L":
        return np.asarray(img)[None]
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _wide_grey_to_uint8(img)[None]
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img).transpose(2, 0, 1)


class WideGreyRangeError(ValueError):
    """A 16-bit, 32-bit or float grey image whose values its mode's scale cannot read."""


def _wide_grey_to_uint8(img):
    """A grey image of more than 8 bits as 8 bits, where Pillow's ``convert`` would clip its values
    to 0-255 silently (a 16-bit image all but white). ``I;16`` modes are read as 0-65535; ``I``
    (32-bit integers) and ``F`` (floats) as 0-255, Pillow's own scale for them, and values outside
    it, or a float image all within 0-1 (Pillow would read it all but black), raise."""
    values = np.asarray(img).astype(np.float64)  # either byte order
    top = 65535.0 if img.mode.startswith("I;16") else 255.0
    if not values.size:
        return values.astype(np.uint8)
    low, high = values.min(), values.max()
    unit = img.mode == "F" and 0 < high <= 1
    if not np.isfinite(values).all() or low < 0 or high > top or unit:
        raise WideGreyRangeError(
            f"A {img.mode!r} grey image has values from {low:g} to {high:g}; sktransfer reads this mode as 0-{top:g}"
            f"{' (a float image of 0-1 would be all but black)' if unit else ''}. Convert it to 8 bits (mode 'L'), "
            "or pass its pixels as a float array with pixel_range set."
        )
    return np.round(values * (255.0 / top)).astype(np.uint8)


def _read_image(path, draft_side=None):
    """A file's pixels as a (C, H, W) uint8 array; a JPEG (or MPO, cameras' JPEG with previews)
    decoded at 1/2, 1/4 or 1/8 scale when every side stays at least ``draft_side`` (libjpeg's DCT
    scaling; Pillow's other formats ignore ``draft``)."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Image file {path!r} does not exist; check the path.")
    try:
        with Image.open(path) as img:
            if draft_side is not None:
                img.draft(img.mode, (draft_side, draft_side))
            img.load()
            return _pil_to_array(img)
    except WideGreyRangeError as exc:
        raise WideGreyRangeError(f"Image file {path!r}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"Could not decode image file {path!r} ({type(exc).__name__}: {exc}). "
            "Pass an image PIL can read (PNG, JPEG, TIFF, BMP, ...) or remove it."
        ) from exc


def _to_nchw(array, torch_layout):
    """(N, H, W), (N, H, W, C) or (N, C, H, W) -> (N, C, H, W); no copy."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim != 4:
        raise ValueError(
            f"Image arrays must be (N, H, W) or (N, H, W, C) (torch: (N, C, H, W)); "
            f"got an array with {array.ndim} dimensions and shape {tuple(array.shape)}."
        )
    first, last = array.shape[1], array.shape[-1]
    if torch_layout:
        if first in (1, 3, 4):
            return array
        if last in (1, 3, 4):
            return array.permute(0, 3, 1, 2)
    else:
        if last in (1, 3, 4):
            return array.transpose(0, 3, 1, 2)
        if first in (1, 3, 4):
            return array
    raise ValueError(
        f"Cannot tell the channel axis of images of shape {tuple(array.shape)}: "
        "channels must be 1 (grey), 3 (RGB) or 4 (RGBA), last for numpy "
        "(N, H, W, C) and second for torch (N, C, H, W)."
    )


def default_input_shape(n_features):
    """Shape of one image from a row of ``n_features`` values (documented default)."""
    side = math.isqrt(n_features)
    return (side, side) if side * side == n_features else (1, n_features)


def _check_input_shape(input_shape, n_features):
    if input_shape is None:
        return default_input_shape(n_features)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"input_shape must be (H, W) or (H, W, C) with C in {{1, 3, 4}}, got {input_shape!r}."
        )
    if math.prod(shape) != n_features:
        raise ValueError(
            f"input_shape={shape} holds {math.prod(shape)} values but X has "
            f"{n_features} columns; pass the shape of one image, e.g. (8, 8) for 64 columns."
        )
    return shape


def _check_finite(data):
    bad = (~torch.isfinite(data)).any() if isinstance(data, torch.Tensor) else None
    if bad is None:
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            bad = True
    if bad:
        raise ValueError(
            "Input images contain NaN or infinity; replace them (e.g. np.nan_to_num) "
            "before calling the estimator."
        )


def _looks_like_items(seq):
    first = seq[0]
    return isinstance(first, (str, os.PathLike, np.ndarray, torch.Tensor)) or is_pil(first)


def _check_not_empty(height_width):
    if min(height_width) == 0:
        raise ValueError(f"Found an image of {height_width[0]}x{height_width[1]} pixels; every image needs at "
                         "least one row and one column.")


def _items_source(items, pixel_range):
    kinds = set()
    for it in items:
        if isinstance(it, (str, os.PathLike)):
            kinds.add("path")
        elif is_pil(it):
            kinds.add("pil")
        elif isinstance(it, (np.ndarray, torch.Tensor)):
            if isinstance(it, np.ndarray) and it.dtype.kind not in "biuf":
                raise TypeError(
                    f"Image arrays must be numeric, got dtype {it.dtype}."
                )
            if it.ndim not in (2, 3):
                raise ValueError(
                    f"Each image in a list must be (H, W) or (H, W, C), got shape {tuple(it.shape)}."
                )
            if 0 in it.shape:
                raise ValueError(f"Found an empty image of shape {tuple(it.shape)}; every image needs pixels.")
            _check_finite(it)
            kinds.add("array")
        else:
            raise TypeError(
                "A list of images must hold file paths, PIL images or arrays; found "
                f"{type(it).__name__}. For a table of pixel values pass a 2-D numeric array."
            )
    return ListSource(list(items), pixel_range)


def as_images(X, estimator, *, input_shape=None, pixel_range=(0.0, 1.0), reset=False):
    """Validate ``X`` and wrap it as an :class:`ImageSource`.

    Numeric 2-D tables go through scikit-learn's ``validate_data`` (so
    ``n_features_in_`` and ``feature_names_in_`` follow sklearn's rules).
    """
    if X is None:
        raise ValueError("X is None; pass images (arrays, tensors, paths or PIL images).")
    if reset:  # a fit on images that are no table forgets the columns of an earlier fit's table
        for name in ("n_features_in_", "feature_names_in_"):
            estimator.__dict__.pop(name, None)
    if pd is not None and isinstance(X, pd.DataFrame):
        if X.shape[1] == 1 and X.shape[0] and _looks_like_items(list(X.iloc[:1, 0])):
            X = list(X.iloc[:, 0])
    elif pd is not None and isinstance(X, pd.Series):
        X = list(X)
    if isinstance(X, torch.Tensor):
        if X.ndim == 0 or X.shape[0] == 0:
            raise ValueError("Found an empty batch of images (0 samples); pass at least one image.")
        if X.is_complex() or X.dtype == torch.bool:
            X = X.float()
        elif str(X.dtype) in ("torch.uint32", "torch.uint64"):  # torch >= 2.3; few ops take them
            X = X.double()  # read as numpy's are
        data = _to_nchw(X, torch_layout=True)
        _check_finite(data)
        return ArraySource(data, pixel_range)
    if isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 1 and len(X) and _looks_like_items(X):
        X = list(X)
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError("Found an empty list of images (0 samples); pass at least one image.")
        if _looks_like_items(X) or not isinstance(X[0], (Number, list, tuple, np.number)):
            return _items_source(X, pixel_range)
    if isinstance(X, np.ndarray) and X.ndim >= 3:
        if X.dtype.kind not in "biuf":
            raise TypeError(
                f"Image arrays must be numeric (uint8, uint16 or float), got dtype {X.dtype}."
            )
        if X.ndim > 4:
            raise ValueError(
                f"Image arrays must have 3 or 4 dimensions ((N, H, W) or (N, H, W, C)); "
                f"got shape {X.shape}. Reshape or pass a list of images."
            )
        check_array(X, allow_nd=True, dtype=None, ensure_all_finite=True, input_name="X")
        if X.ndim == 3 and X.shape[2] in (3, 4) and min(X.shape[:2]) > 4:
            warnings.warn(
                f"X of shape {X.shape} is read as {X.shape[0]} grey images of {X.shape[1]}x{X.shape[2]} pixels. "
                f"For one colour image pass X[None] (shape {(1, *X.shape)}).", UserWarning, stacklevel=3)
        return ArraySource(_to_nchw(X, torch_layout=False), pixel_range)
    # a numeric table: one image per row
    X = validate_data(estimator, X, reset=reset, dtype="numeric", ensure_all_finite=True)
    shape = _check_input_shape(input_shape, X.shape[1])
    images = X.reshape((X.shape[0],) + shape)
    return ArraySource(_to_nchw(images, torch_layout=False), pixel_range)


def learn_pixel_range(source, pixel_range):
    """The value range used for non-uint8/uint16 numeric inputs (fitted)."""
    if pixel_range != "auto":
        lo, hi = (float(v) for v in pixel_range)
        return lo, hi
    if source.value_range is None:
        return 0.0, 1.0
    lo, hi = source.value_range
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    lo = min(lo, 0.0)
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi
