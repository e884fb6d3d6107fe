"""eigenguard: train clean image classifiers on untrusted, possibly poisoned data.

Three entry points cover most uses:
    from eigenguard import TrainConfig, train
    result = train(TrainConfig(dataset="fashion-mnist", profile="quick"))
    result.metrics["acc"], result.metrics["asr"]
and, for your own loops, `load_dataset`, `create_model`, `create_attack`.
"""

__version__ = "0.1.0"

from eigenguard.attacks import ATTACKS, Attack, create_attack
from eigenguard.config import PROFILES, TrainConfig, resolve_config
from eigenguard.data import DATASETS, ImageDataset, load_dataset
from eigenguard.errors import EigenguardError
from eigenguard.models import MODELS, Backbone, create_model
from eigenguard.training.pipeline import RunResult, train

__all__ = [
    "ATTACKS",
    "DATASETS",
    "MODELS",
    "PROFILES",
    "Attack",
    "Backbone",
    "EigenguardError",
    "ImageDataset",
    "RunResult",
    "TrainConfig",
    "__version__",
    "create_attack",
    "create_model",
    "load_dataset",
    "resolve_config",
    "train",
]
