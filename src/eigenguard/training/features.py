"""Activations inside a model: at an insertion point for a whole image set, or tapped while it runs.

The one place eigenguard reads features: Spectral Signatures (last stage), the spectral analysis (any
point), NAD (attention maps of three stages during training) and Fine-Pruning (the classifier's input).
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from eigenguard.data.transforms import Normalize
from eigenguard.models.backbone import Backbone


@torch.no_grad()
def features(
    model: Backbone,
    images: torch.Tensor,
    point: str,
    normalize: Normalize,
    *,
    batch_size: int = 256,
    amp: bool = False,
    through_point: bool = True,
) -> torch.Tensor:
    """Flattened float32 activations (N, D) of uint8 `images` at insertion point `point` (after any module
    placed there; `through_point=False`: before it, what that module receives), in eval mode (a guard
    filters each image alone); the model's mode is restored after."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size])
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                chunks.append(model.features(x, point, through_point).float().flatten(1))
    finally:
        model.train(was_training)
    return torch.cat(chunks)


class FeatureTap:
    """Hands every output (or input, `inputs=True`) of some modules to `keep` while attached.

    `keep(name, tensor)` defaults to remembering the latest tensor of each module in `self.outputs`.
    Use as a context manager, or call `remove()`.
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        *,
        inputs: bool = False,
        keep: Callable[[str, torch.Tensor], None] | None = None,
    ) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        keep = keep or self.outputs.__setitem__
        if inputs:
            self.handles = [
                m.register_forward_pre_hook(lambda _m, args, name=name: keep(name, args[0]))
                for name, m in modules.items()
            ]
        else:
            self.handles = [
                m.register_forward_hook(lambda _m, _i, out, name=name: keep(name, out)) for name, m in modules.items()
            ]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.remove()


def classifier(model: Backbone) -> nn.Linear:
    """The model's last linear layer: what reads the last hidden layer."""
    return [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]


@torch.no_grad()
def classifier_inputs(
    model: Backbone, images: torch.Tensor, normalize: Normalize, *, batch_size: int = 256
) -> torch.Tensor:
    """What the model's last linear layer receives for uint8 `images` (N, D), float32, in eval mode: the last
    hidden layer's activations (Activation Clustering, Fine-Pruning's channels)."""
    linear = classifier(model)
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        with FeatureTap({"linear": linear}, inputs=True, keep=lambda _name, x: chunks.append(x.float().flatten(1))):
            for start in range(0, len(images), batch_size):
                model(normalize(images[start : start + batch_size]))
    finally:
        model.train(was_training)
    return torch.cat(chunks)
