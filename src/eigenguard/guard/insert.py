"""Put an EigenGuard into a model: at a named insertion point of ours, or after any submodule of any model."""

from typing import Any

from torch import nn

from eigenguard.errors import EigenguardError
from eigenguard.guard.module import EigenGuard
from eigenguard.models.backbone import Backbone


def guard(model: nn.Module, at: str = "stage1", **options: Any) -> EigenGuard:
    """Insert an EigenGuard (built from `options`: `options=GuardOptions(...)`, or its fields by name) into
    `model` and return it.

    For eigenguard's models, `at` is an insertion point ("stem", "stage1", ...; "stage1" is after the first
    residual stage, where the paper puts it). For any other nn.Module, `at` is a dotted submodule path
    (torchvision's resnet18: "layer1"); the guard filters that submodule's output through a forward hook and
    is registered on the model as `eigenguard_<path>`, so it moves with .to() and is in the state_dict.

        model = torchvision.models.resnet18(num_classes=10)
        g = guard(model, at="layer1", k=20)
    """
    module = EigenGuard(**options)
    if isinstance(model, Backbone) and at in model.insertion_points:
        model.insert(at, module)
        return module
    try:
        target = model.get_submodule(at)
    except AttributeError:
        allowed = f"one of {', '.join(model.insertion_points)} or " if isinstance(model, Backbone) else ""
        raise EigenguardError(f"cannot place a guard at '{at}': allowed: {allowed}a dotted submodule path") from None
    if target is model:
        raise EigenguardError("cannot place a guard at the model's own output; name a submodule")
    if isinstance(model, nn.Sequential | nn.ModuleList | nn.ModuleDict):
        raise EigenguardError(
            "the model is a container whose forward runs every child; wrap it in a module of your own first"
        )
    name = "eigenguard_" + at.replace(".", "_")
    if hasattr(model, name):
        raise EigenguardError(f"a guard is already placed at '{at}'")
    model.add_module(name, module)
    target.register_forward_hook(lambda _module, _inputs, output: module(output))
    return module


def find_guards(model: nn.Module) -> list[EigenGuard]:
    """Every EigenGuard inside `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, EigenGuard)]
