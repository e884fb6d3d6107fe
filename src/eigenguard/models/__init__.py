"""The model zoo: CIFAR-style classifiers with named insertion points, looked up by name."""

from collections.abc import Callable

from eigenguard.models.backbone import Backbone, check_model_args
from eigenguard.models.mobilenetv2 import MobileNetV2
from eigenguard.models.resnet import resnet18, resnet34
from eigenguard.models.vgg import VGG16
from eigenguard.registry import Registry

MODELS = Registry[Callable[..., Backbone]]("model")
MODELS.register("resnet18")(resnet18)
MODELS.register("resnet34")(resnet34)
MODELS.register("vgg16")(VGG16)
MODELS.register("mobilenetv2")(MobileNetV2)


def create_model(name: str, *, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> Backbone:
    """Build the model registered as `name`; raises `EigenguardError` for an unknown name or bad argument."""
    factory = MODELS.get(name)
    check_model_args(in_channels, num_classes, width)
    return factory(in_channels=in_channels, num_classes=num_classes, width=width)


__all__ = ["MODELS", "Backbone", "create_model"]
