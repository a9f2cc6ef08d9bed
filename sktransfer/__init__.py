"""sktransfer: transfer learning as scikit-learn estimators, on PyTorch."""

from ._classifier import FineTuneClassifier
from ._compat import install_module_aliases
from ._extractor import PretrainedFeatureExtractor
from ._history import TrainingHistoryDisplay
from ._persistence import load
from ._regressor import FineTuneRegressor
from ._soups import fuse, greedy_soup
from ._version import __version__
from .backbones._backbone import Backbone
from .backbones._loading import load_backbone
from .backbones._weights import WeightsNotFoundError
from .data._augment import RandomAffine
from .data._cache import cache_info, clear_cache
from .data._preprocessing import Preprocessing
from .training._network import TransferNet

install_module_aliases()

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
    "fuse",
    "greedy_soup",
    "load",
    "load_backbone",
]
