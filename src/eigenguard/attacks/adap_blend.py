"""Adap-Blend (Qi, Xie, Li, Mahloujifar & Mittal, ICLR 2023): a blend built to defeat defenses that assume
poisoned and clean samples separate in the latent space, EigenGuard's premise among them.

Two devices keep the poisons' features close to the clean ones:
- Regularisation samples: besides the payload (trigger blended in, label set to the target), `cover_rate`
  of the training set gets the trigger too but keeps its true label, so the trigger alone does not decide
  the class; only its full, stronger form at test time does. Their share of all triggered samples,
  cover / (payload + cover), is the paper's conservatism; the default 0.003 / 0.003 (the authors' CIFAR-10
  command) makes it one half.
- Piece-wise training triggers: the trigger is cut into `pieces` equal blocks (a 4 x 4 grid) and for every
  payload and regularisation sample a fresh random `mask_rate` of the blocks (8 of 16) is left out.
Training blends with `alpha` 0.15, test images with the whole trigger at `test_alpha` 0.2 (the
authors' toolbox, vtu81/backdoor-toolbox; their first repository uses 0.2 for both):
    x' = x + alpha * m * (t - x).

Our choices:
- The trigger t is uniform noise in [0, 255] drawn from the seed, as `blend`'s, where the authors blend a
  Hello Kitty picture: no picture travels with this library, and the noise makes Adap-Blend the adaptive
  form of our own Blend. The blocks' edges are at round(i * H / 4), so any image size works.
- Payload samples come from the non-target classes as in every dirty-label attack here; regularisation
  samples from the non-target classes outside the payload (the paper's wording; the authors' code draws
  both from every class). They are recorded as `cross_indices`.
- Masks and regularisation samples are drawn from the run's poisoning generator, so the seed decides them.
Default rate 0.003 of the training set (the authors' CIFAR-10 value): 60 payload images in the quick
profile's 20,000.
"""

from typing import ClassVar

import torch

from eigenguard.attacks.base import RegularisedAttack
from eigenguard.errors import EigenguardError
from eigenguard.registry import Ranges


def piece_masks(
    shape: tuple[int, int], pieces: int, hidden: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """`count` (H, W) float masks, each with a random `hidden` of the `pieces` blocks of a square grid at 0."""
    side = round(pieces**0.5)
    h, w = shape
    rows = [round(i * h / side) for i in range(side + 1)]
    cols = [round(i * w / side) for i in range(side + 1)]
    block = torch.zeros(pieces, h, w)
    for i in range(pieces):
        r, c = divmod(i, side)
        block[i, rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = 1
    order = torch.rand(count, pieces, generator=generator).argsort(dim=1)
    shown = torch.ones(count, pieces)
    shown.scatter_(1, order[:, :hidden], 0.0)
    return torch.einsum("np,phw->nhw", shown, block)


class AdapBlend(RegularisedAttack):
    name = "adap-blend"
    RANGES: ClassVar[Ranges] = {
        "alpha": (0, 1),
        "test_alpha": (0, 1),
        "cover_rate": (0, 1),
        "pieces": (1, None),
        "mask_rate": (0, 1),
    }
    default_rate = 0.003

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        target: int = 0,
        seed: int = 0,
        alpha: float = 0.15,
        test_alpha: float = 0.2,
        cover_rate: float = 0.003,
        pieces: int = 16,
        mask_rate: float = 0.5,
    ) -> None:
        super().__init__(image_shape, target, seed)
        if not (0 < alpha <= 1 and 0 < test_alpha <= 1):
            raise EigenguardError(f"adap-blend alpha {alpha} and test_alpha {test_alpha} must lie in (0, 1]")
        if not 0 <= cover_rate <= 1 or not 0 <= mask_rate < 1:
            raise EigenguardError(
                f"adap-blend cover_rate {cover_rate} must lie in [0, 1], mask_rate {mask_rate} in [0, 1)"
            )
        if pieces < 1 or round(pieces**0.5) ** 2 != pieces:
            raise EigenguardError(f"adap-blend pieces {pieces} must be a square number (16: a 4 x 4 grid)")
        if round(pieces**0.5) > min(image_shape[1:]):
            side = min(image_shape[1:])
            raise EigenguardError(f"invalid attack option pieces = {pieces}; allowed: a square number up to {side**2}")
        self.alpha, self.test_alpha, self.cover_rate = float(alpha), float(test_alpha), float(cover_rate)
        self.pieces, self.mask_rate = int(pieces), float(mask_rate)
        self.pattern = torch.randint(
            0, 256, self.image_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
        )

    def blend(self, images: torch.Tensor, alpha: float, masks: torch.Tensor | None = None) -> torch.Tensor:
        """x + alpha * m * (t - x), rounded to uint8; `masks` (N, H, W), or the whole trigger."""
        x = images.float()
        weight = torch.full((len(images), 1, 1, 1), alpha, device=images.device)
        if masks is not None:
            weight = alpha * masks.to(images.device)[:, None]
        out = x + weight * (self.pattern.to(images.device, torch.float32) - x)
        return out.round().clamp(0, 255).to(torch.uint8)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The test-time trigger: the whole pattern at `test_alpha`."""
        return self.blend(images, self.test_alpha)

    def training_trigger(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        masks = piece_masks(
            self.image_shape[1:], self.pieces, round(self.mask_rate * self.pieces), len(images), generator
        )
        return self.blend(images, self.alpha, masks)

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "alpha": self.alpha,
            "test_alpha": self.test_alpha,
            "cover_rate": self.cover_rate,
            "pieces": self.pieces,
            "mask_rate": self.mask_rate,
        }
