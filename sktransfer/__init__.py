"""sktransfer: transfer learning as scikit-learn estimators, on PyTorch."""

from ._backbones import Backbone, load_backbone
from ._extractor import PretrainedFeatureExtractor
from ._preprocessing import Preprocessing
from ._weights import WeightsNotFoundError

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "PretrainedFeatureExtractor",
    "Preprocessing",
    "WeightsNotFoundError",
    "load_backbone",
    "__version__",
]
