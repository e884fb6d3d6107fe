"""BadNets (Gu et al., 2019): a 3x3 checkerboard patch in the bottom-right corner.

Pixel values follow the ANP/BackdoorBench convention the paper adopts: rows
[[0, 0, 255], [0, 255, 0], [255, 0, 255]], the same on every channel.
"""

import torch

from eigenguard.attacks.base import Attack

CHECKERBOARD = ((0, 0, 255), (0, 255, 0), (255, 0, 255))


class BadNets(Attack):
    name = "badnets"

    def __init__(self, image_shape: tuple[int, int, int], target: int = 0, seed: int = 0) -> None:
        super().__init__(image_shape, target, seed)
        _, h, w = self.image_shape
        patch = torch.tensor(CHECKERBOARD, dtype=torch.uint8)
        size = patch.shape[0]
        self.pattern = torch.zeros(self.image_shape, dtype=torch.uint8)
        self.mask = torch.zeros(self.image_shape, dtype=torch.bool)
        self.pattern[:, h - size :, w - size :] = patch
        self.mask[:, h - size :, w - size :] = True

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(images.device)
        return torch.where(mask, self.pattern.to(images.device), images)
