"""Blend (Chen et al., 2017): x' = alpha * t + (1 - alpha) * x with a fixed noise image t.

t is uniform noise in [0, 255], one value per pixel and channel, drawn once from the attack seed, so
the same seed gives the same trigger on every machine. alpha = 0.2 as in the paper.
"""

import torch

from eigenguard.attacks.base import Attack
from eigenguard.options import component, option


@component
class Blend(Attack):
    name = "blend"

    alpha: float = option(0.2, "weight of the noise pattern in the blend", "(0, 1]")

    def __post_init__(self) -> None:
        super().__post_init__()
        generator = torch.Generator().manual_seed(self.seed)
        self.pattern = torch.randint(0, 256, self.image_shape, generator=generator, dtype=torch.uint8)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern.to(images.device, torch.float32)
        blended = self.alpha * pattern + (1.0 - self.alpha) * images.float()
        return blended.round_().clamp_(0, 255).to(torch.uint8)
