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

import torch

from eigenguard.attacks.base import RegularisedAttack
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option


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


@component
class AdapBlend(RegularisedAttack):
    name = "adap-blend"
    default_rate = 0.003

    alpha: float = option(0.15, "blend weight of the training-time trigger", "(0, 1]")
    test_alpha: float = option(0.2, "blend weight of the test-time trigger", "(0, 1]")
    cover_rate: float = option(
        0.003, "regularisation samples (trigger, true label), a fraction of the training set", "[0, 1]"
    )
    pieces: int = option(16, "the pattern's pieces, a square number (16: a 4 x 4 grid)", ">= 1")
    mask_rate: float = option(0.5, "fraction of the pieces masked out of each training-time trigger", "[0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        side = round(self.pieces**0.5)
        if side**2 != self.pieces or side > min(self.image_shape[1:]):
            most = min(self.image_shape[1:]) ** 2
            raise EigenguardError(
                f"invalid option pieces = {self.pieces} for attack 'adap-blend'; allowed: a square number up to {most}"
            )
        self.pattern = torch.randint(
            0, 256, self.image_shape, generator=torch.Generator().manual_seed(self.seed), dtype=torch.uint8
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
