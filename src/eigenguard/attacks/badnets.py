"""BadNets (Gu et al., 2019): a 3x3 checkerboard patch in the bottom-right corner.

Pixel values follow the ANP/BackdoorBench convention the paper adopts: rows
[[0, 0, 255], [0, 255, 0], [255, 0, 255]], the same on every channel.
Options for stress tests, off the paper's setting: `size` (the 3x3 pattern tiled to size x size) and
`corner` (br, bl, tr, tl), e.g. a 7x7 patch top-left lies exactly on PDB's defensive trigger.

Two label modes, one trigger:
- `badnets` (all-to-one): every poisoned sample is relabelled `target`;
- `badnets-all2all`: a sample of class y is relabelled (y + 1) mod C, and the ASR counts triggered test
  images predicted as their shifted label (every test image is a source; `target` is unused).
"""

from typing import Literal

import torch

from eigenguard.attacks.base import Attack
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option

CHECKERBOARD = ((0, 0, 255), (0, 255, 0), (255, 0, 255))
Corner = Literal["br", "bl", "tr", "tl"]


def corner_patch(image_shape: tuple[int, ...], patch: torch.Tensor, corner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(pattern, mask) of shape `image_shape` with the square uint8 `patch` in one corner ('br', 'bl', 'tr', 'tl')."""
    _, h, w = image_shape
    size = patch.shape[0]
    rows = slice(h - size, h) if corner[0] == "b" else slice(0, size)
    cols = slice(w - size, w) if corner[1] == "r" else slice(0, size)
    pattern = torch.zeros(image_shape, dtype=torch.uint8)
    mask = torch.zeros(image_shape, dtype=torch.bool)
    pattern[:, rows, cols] = patch
    mask[:, rows, cols] = True
    return pattern, mask


@component
class BadNets(Attack):
    name = "badnets"

    size: int = option(3, "side of the patch in pixels (the 3 x 3 pattern tiled)", ">= 1")
    corner: Corner = option("br", "the corner the patch is stamped in")

    def __post_init__(self) -> None:
        super().__post_init__()
        side = min(self.image_shape[1:])
        if self.size > side:
            raise EigenguardError(f"invalid option size = {self.size!r} for attack 'badnets'; allowed: 1..{side}")
        rows = torch.arange(self.size) % 3
        patch = torch.tensor(CHECKERBOARD, dtype=torch.uint8)[rows][:, rows]
        self.pattern, self.mask = corner_patch(self.image_shape, patch, self.corner)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(images.device)
        return torch.where(mask, self.pattern.to(images.device), images)


@component
class BadNetsAllToAll(BadNets):
    name = "badnets-all2all"

    def backdoor_labels(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        return (labels + 1) % num_classes

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "labels": "(y + 1) mod C"}
