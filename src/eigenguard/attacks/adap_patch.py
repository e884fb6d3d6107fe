"""Adap-Patch (Qi, Xie, Li, Mahloujifar & Mittal, ICLR 2023): the patch form of the adaptive attack built
against latent-separation defenses (see adap_blend.py for the idea).

Training: k = 4 different patch triggers, each blended at its own opacity (0.5, 0.2, 0.5, 0.3), one per
triggered sample, in contiguous quarters of the payload (relabelled to the target) and of the
regularisation samples (`cover_rate`, true labels kept). Test: a stronger combination than any training
sample carries, stamped at full opacity: the first patch in both bottom corners plus the four-corner
checker. Rates 0.003 payload and 0.006 regularisation (the authors' CIFAR-10 command), so two thirds of the
triggered samples keep their labels. x' = x + alpha * m * (p - x) for pattern p, mask m.

The four training triggers, placed as the authors' (positions for 32 x 32, anchored to the same corners
at other sizes):
  0. a 5 x 5 patch in the bottom-right corner (their phoenix logo), alpha 0.5;
  1. a sparse 13 x 13 shape one pixel from the top-right corner, 83% of its pixels (their Firefox logo:
     140 of 169), alpha 0.2;
  2. the 3 x 3 X checker ([[255, 0, 255], [0, 255, 0], [255, 0, 255]], black pixels stamped too) in all
     four corners, alpha 0.5;
  3. an 8 x 8 square 3 pixels from the bottom-right corner (rows and columns 21-28), alpha 0.3.
Our choice: the authors' logos are pictures; here patches 0, 1 and 3 are colour noise drawn from the
seed, with the logos' sizes, places and (for the sparse one) density. Payload from the non-target
classes; regularisation samples from the other non-target samples, recorded as `cross_indices`.
"""

import torch

from eigenguard.attacks.base import RegularisedAttack
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option

X_CHECKER = ((255, 0, 255), (0, 255, 0), (255, 0, 255))
TRAIN_ALPHAS = (0.5, 0.2, 0.5, 0.3)


@component
class AdapPatch(RegularisedAttack):
    name = "adap-patch"
    default_rate = 0.003

    cover_rate: float = option(
        0.006, "regularisation samples (trigger, true label), a fraction of the training set", "[0, 1]"
    )
    alphas: tuple[float, float, float, float] = option(
        TRAIN_ALPHAS, "opacity of each of the four training-time patches", "(0, 1]"
    )
    test_alpha: float = option(1.0, "opacity of the test-time trigger", "(0, 1]")

    def __post_init__(self) -> None:
        super().__post_init__()
        c, h, w = self.image_shape
        if h < 16 or w < 16:
            raise EigenguardError(f"adap-patch needs images of at least 16 x 16 pixels, got {h} x {w}")
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.randint(0, 256, (c, h, w), generator=g, dtype=torch.uint8)
        self.patterns = torch.zeros(4, c, h, w, dtype=torch.uint8)
        self.masks = torch.zeros(4, h, w, dtype=torch.bool)
        self.masks[0, h - 5 :, w - 5 :] = True
        self.masks[1, 1:14, w - 14 : w - 1] = torch.rand(13, 13, generator=g) < 140 / 169
        checker = torch.tensor(X_CHECKER, dtype=torch.uint8)
        for rows, cols in ((slice(0, 3), slice(0, 3)), (slice(0, 3), slice(w - 3, w)),
                           (slice(h - 3, h), slice(0, 3)), (slice(h - 3, h), slice(w - 3, w))):  # fmt: skip
            self.patterns[2, :, rows, cols] = checker
            self.masks[2, rows, cols] = True
        self.masks[3, h - 11 : h - 3, w - 11 : w - 3] = True
        for j in (0, 1, 3):
            self.patterns[j] = torch.where(self.masks[j], noise, self.patterns[j])
        # test: patch 0 in both bottom corners (copied to the left) and the four-corner checker
        self.test_pattern = torch.where(self.masks[2], self.patterns[2], self.patterns[0])
        self.test_mask = self.masks[0] | self.masks[2]
        self.test_pattern[:, h - 5 :, :5] = self.patterns[0][:, h - 5 :, w - 5 :]
        self.test_mask[h - 5 :, :5] = True

    @staticmethod
    def _stamp(images: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
        x = images.float()
        p, m = pattern.to(images.device, torch.float32), mask.to(images.device, torch.float32)
        return (x + alpha * m * (p - x)).round().clamp(0, 255).to(torch.uint8)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The test-time trigger: both bottom-corner patches and the checker, at `test_alpha` (1: pasted)."""
        return self._stamp(images, self.test_pattern, self.test_mask, self.test_alpha)

    def training_trigger(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Trigger j on the j-th quarter of `images` (in order), each at its own opacity (no randomness)."""
        out = images.clone()
        bounds = [round(j * len(images) / 4) for j in range(5)]
        for j in range(4):
            part = slice(bounds[j], bounds[j + 1])
            out[part] = self._stamp(images[part], self.patterns[j], self.masks[j], self.alphas[j])
        return out
