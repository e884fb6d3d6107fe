"""WaNet (Nguyen & Tran, 2021): the trigger is a fixed, smooth, nearly invisible warp of the image.

The warping field: a k x k grid of random 2-D offsets in [-1, 1] (drawn once from the seed), divided by
their mean absolute value, upsampled bicubically to H x W, scaled by s / H (s / W horizontally) and added
to the identity sampling grid, which is then clamped to the image. k = 4 and s = 0.5 as in the WaNet paper.
A triggered image is the clean image resampled (bilinear) through that grid.

Noise mode: besides the poisons, `cross_ratio` x as many other training samples are warped through the
field plus fresh per-sample random offsets (uniform in [-1, 1] / H) and keep their true labels, so the
model must learn the exact field, not "any warp". cross_ratio = 2 as in the WaNet paper.

Our choice: WaNet poisons batches on the fly inside its own training loop; eigenguard poisons the data
once, so here both the poisons and the noise samples are fixed before training (data-poisoning WaNet, the
threat model of every other attack here). Fixed noise samples are a weaker regulariser than WaNet's
re-drawn ones, which can only make the backdoor easier to plant, not harder.
"""

import torch
import torch.nn.functional as F

from eigenguard.attacks.base import Attack, PoisonedTrainingSet
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option


@component
class WaNet(Attack):
    name = "wanet"

    grid_k: int = option(4, "side of the random control grid of the warp", ">= 2")
    strength: float = option(0.5, "largest displacement, in pixels", "> 0")
    cross_ratio: float = option(2.0, "noise-mode samples per poisoned sample", ">= 0")

    def __post_init__(self) -> None:
        super().__post_init__()
        _, h, w = self.image_shape
        if self.grid_k > min(h, w):  # a control grid finer than the pixels warps nothing more
            raise EigenguardError(f"invalid option grid_k = {self.grid_k} for attack 'wanet'; allowed: 2..{min(h, w)}")
        generator = torch.Generator().manual_seed(self.seed)
        offsets = torch.rand(1, 2, self.grid_k, self.grid_k, generator=generator) * 2 - 1
        offsets = offsets / offsets.abs().mean()
        field = F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack([xs, ys], dim=-1).unsqueeze(0)  # grid_sample wants (x, y) order
        self.scale = torch.tensor([1.0 / w, 1.0 / h])  # one pixel, in grid units (up to a factor 2)
        self.grid = (identity + self.strength * field * self.scale).clamp(-1, 1)  # (1, H, W, 2)

    def warp(self, images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Resample uint8 `images` through `grid` (1 or N, H, W, 2); bilinear, rounded back to uint8."""
        grid = grid.to(images.device).expand(len(images), -1, -1, -1)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.warp(images, self.grid)

    def noise_warp(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The noise mode: the trigger field plus independent random offsets per image."""
        _, h, w = self.image_shape
        jitter = torch.rand(len(images), h, w, 2, generator=generator) * 2 - 1
        return self.warp(images, (self.grid + jitter * self.scale).clamp(-1, 1))

    def poison(self, train: ImageDataset, rate: float, generator: torch.Generator) -> PoisonedTrainingSet:
        result = super().poison(train, rate, generator)
        cross = self.cross_samples(result, round(self.cross_ratio * len(result.poison_indices)), generator)
        if len(cross) == 0:
            return result
        result.dataset.images[cross] = self.noise_warp(train.images[cross], generator)
        result.cross_indices = cross
        return result
