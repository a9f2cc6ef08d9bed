"""sktransfer: transfer learning as scikit-learn estimators, on PyTorch."""

from ._augment import RandomAffine
from ._backbones import Backbone, load_backbone
from ._cache import cache_info, clear_cache
from ._extractor import PretrainedFeatureExtractor
from ._finetune import FineTuneClassifier
from ._history import TrainingHistoryDisplay
from ._network import TransferNet
from ._preprocessing import Preprocessing
from ._weights import WeightsNotFoundError

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "FineTuneClassifier",
    "PretrainedFeatureExtractor",
    "Preprocessing",
    "RandomAffine",
    "TrainingHistoryDisplay",
    "TransferNet",
    "WeightsNotFoundError",
    "cache_info",
    "clear_cache",
    "load_backbone",
    "__version__",
]
