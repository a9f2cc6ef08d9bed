"""sktransfer: transfer learning as scikit-learn estimators, on PyTorch."""

from ._augment import RandomAffine
from ._backbones import Backbone, load_backbone
from ._cache import cache_info, clear_cache
from ._classifier import FineTuneClassifier
from ._extractor import PretrainedFeatureExtractor
from ._history import TrainingHistoryDisplay
from ._network import TransferNet
from ._persistence import load
from ._preprocessing import Preprocessing
from ._regressor import FineTuneRegressor
from ._weights import WeightsNotFoundError

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "FineTuneClassifier",
    "FineTuneRegressor",
    "Preprocessing",
    "PretrainedFeatureExtractor",
    "RandomAffine",
    "TrainingHistoryDisplay",
    "TransferNet",
    "WeightsNotFoundError",
    "__version__",
    "cache_info",
    "clear_cache",
    "load",
    "load_backbone",
]
