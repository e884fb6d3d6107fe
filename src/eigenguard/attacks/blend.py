"""Blend (Chen et al., 2017): x' = alpha * t + (1 - alpha) * x with a fixed noise image t.

t is uniform noise in [0, 255], one value per pixel and channel, drawn once from the attack seed, so
the same seed gives the same trigger on every machine. alpha = 0.2 as in the paper.
"""

from typing import ClassVar

import torch

from eigenguard.attacks.base import Attack
from eigenguard.errors import EigenguardError
from eigenguard.registry import Ranges


class Blend(Attack):
    name = "blend"
    RANGES: ClassVar[Ranges] = {"alpha": (0, 1)}

    def __init__(self, image_shape: tuple[int, int, int], target: int = 0, seed: int = 0, alpha: float = 0.2) -> None:
        super().__init__(image_shape, target, seed)
        if not 0.0 < alpha <= 1.0:
            raise EigenguardError(f"blend alpha {alpha} is outside the allowed range (0, 1]")
        self.alpha = float(alpha)
        generator = torch.Generator().manual_seed(self.seed)
        self.pattern = torch.randint(0, 256, self.image_shape, generator=generator, dtype=torch.uint8)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        pattern = self.pattern.to(images.device, torch.float32)
        blended = self.alpha * pattern + (1.0 - self.alpha) * images.float()
        return blended.round_().clamp_(0, 255).to(torch.uint8)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "alpha": self.alpha}
