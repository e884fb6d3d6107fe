"""The base class of every model: a chain of named stages with an insertion point after each one."""

import math
from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor, nn

from eigenguard.errors import EigenguardError


class Backbone(nn.Module):
    """An image classifier built as named stages, then a head.

    After each stage the activations pass through `self.points[name]`, an `nn.Identity` placeholder
    until `insert` puts a module there (e.g. a defense). The point names are the stage names, in
    forward order; subclasses say what each one means in `POINT_MEANINGS` (name -> description).
    `on_input` and `on_output` (identity until a defense sets them) wrap the whole network: what a defense
    does to every input and to the logits at inference (PDB stamps its trigger and inverts its label map).
    """

    POINT_MEANINGS: ClassVar[Mapping[str, str]] = {}

    def __init__(self, stages: Mapping[str, nn.Module], head: nn.Module) -> None:
        super().__init__()
        if list(stages) != list(self.POINT_MEANINGS):
            raise ValueError(f"stages {list(stages)} do not match POINT_MEANINGS {list(self.POINT_MEANINGS)}")
        self.stages = nn.ModuleDict(stages)
        self.points = nn.ModuleDict({name: nn.Identity() for name in stages})
        self.head = head
        self.on_input: nn.Module = nn.Identity()
        self.on_output: nn.Module = nn.Identity()
        self._init_weights()

    @property
    def insertion_points(self) -> tuple[str, ...]:
        """Names of the insertion points, in forward order."""
        return tuple(self.points.keys())

    def insert(self, name: str, module: nn.Module) -> None:
        """Put `module` at insertion point `name`, replacing whatever was there."""
        self._check_point(name)
        if not isinstance(module, nn.Module):
            raise EigenguardError(f"can only insert an nn.Module, got {type(module).__name__}")
        self.points[name] = module

    def forward(self, x: Tensor) -> Tensor:
        x = self.on_input(x)
        for name, stage in self.stages.items():
            x = self.points[name](stage(x))
        return self.on_output(self.head(x))

    def features(self, x: Tensor, point: str, through_point: bool = True) -> Tensor:
        """Activations at `point`, after the module inserted there (`through_point=False`: before it, what
        that module receives); later stages are not run."""
        self._check_point(point)
        x = self.on_input(x)
        for name, stage in self.stages.items():
            x = stage(x)
            if name == point:
                return self.points[name](x) if through_point else x
            x = self.points[name](x)
        return x

    def stages_through(self, point: str) -> list[nn.Module]:
        """The stages up to and including `point`'s, with the modules inserted before it: what computes the
        input of the module at `point`."""
        self._check_point(point)
        modules: list[nn.Module] = [self.on_input]
        for name, stage in self.stages.items():
            modules.append(stage)
            if name == point:
                return modules
            modules.append(self.points[name])
        return modules

    def _check_point(self, name: str) -> None:
        if name not in self.points:
            raise EigenguardError(
                f"unknown insertion point '{name}' for {type(self).__name__}; "
                f"allowed: {', '.join(self.insertion_points)}"
            )

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def check_model_args(in_channels: int, num_classes: int, width: float) -> None:
    """Raise `EigenguardError` unless the arguments every model constructor takes are usable."""
    if in_channels < 1:
        raise EigenguardError(f"in_channels must be >= 1, got {in_channels}")
    if num_classes < 2:
        raise EigenguardError(f"num_classes must be >= 2, got {num_classes}")
    if not (math.isfinite(width) and width > 0):
        raise EigenguardError(f"width must be a finite number > 0, got {width}")


def scaled(channels: int, width: float) -> int:
    """`channels` times the width multiplier, rounded, at least 1."""
    return max(1, round(channels * width))


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free 'same'-padded conv followed by BatchNorm (no activation)."""
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
    )
    return [conv, nn.BatchNorm2d(out_channels)]


def classifier_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """Global average pool to 1x1, flatten, linear."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
