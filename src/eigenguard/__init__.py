"""eigenguard: train clean image classifiers on untrusted, possibly poisoned data.

Three entry points cover most uses:
    from eigenguard import TrainConfig, train
    result = train(TrainConfig(profile="quick", attack="blend", defense={"name": "eigenguard", "k": 20}))
    result.metrics["acc"], result.metrics["asr"]
and, for your own models, the defense in three lines:
    from eigenguard.guard import guard
    model = torchvision.models.resnet18(num_classes=10)
    guard(model, at="layer1")          # after the first residual stage, k=20, momentum=0.7
plus `load_model(run_dir)` (a trained run, ready to classify uint8 images) and `load_dataset`,
`create_model`, `create_attack`, `create_defense` for your own loops.
"""

from eigenguard.attacks import ATTACKS, Attack, create_attack
from eigenguard.config import PROFILES, Component, TrainConfig
from eigenguard.data import DATASETS, ImageDataset, load_dataset
from eigenguard.defenses import DEFENSES, Defense, create_defense
from eigenguard.errors import EigenguardError
from eigenguard.guard import EigenGuard
from eigenguard.models import MODELS, Backbone, create_model
from eigenguard.pipeline import RunResult, resolve, train
from eigenguard.pipeline.predict import load_model
from eigenguard.version import __version__

__all__ = [
    "ATTACKS",
    "DATASETS",
    "DEFENSES",
    "MODELS",
    "PROFILES",
    "Attack",
    "Backbone",
    "Component",
    "Defense",
    "EigenGuard",
    "EigenguardError",
    "ImageDataset",
    "RunResult",
    "TrainConfig",
    "__version__",
    "create_attack",
    "create_defense",
    "create_model",
    "load_dataset",
    "load_model",
    "resolve",
    "train",
]
