"""An adaptive attack on EigenGuard: many distinct triggers, each too weak to be a top direction.

Why it targets the guard's assumption. EigenGuard rests on the observation that a backdoor trigger lives
in a low-dimensional subspace of the features: with one trigger, the poisoned rows of a batch share one
feature direction, which therefore carries a large singular value. The guard flattens the top-k singular
values to sigma_k, so that direction can no longer outweigh the clean ones. An attacker who knows this
spreads the same poison budget over m > k triggers. Each trigger now poisons only 1/m of the budget, so in
any batch (and in the history buffer) its direction carries roughly 1/m of the poisoned energy: below the
top-k it is not rescaled at all, and the guard's equalisation never touches it. The network still learns
every trigger -> target association (each is a consistent, learnable shortcut with budget / m examples),
and at test time any single trigger fires. m is the attack's knob against the guard's k: the default
m = 40 is twice the guard's default k = 20.

Triggers (drawn once from the seed):
- kind 'patch' (default): m random 3x3 binary patterns (0 / 255, the same on every channel) at m random
  positions inside the image; BadNets' patch, m times over, anywhere.
- kind 'blend': m independent uniform-noise images blended at `alpha` (default 0.1): low-amplitude,
  full-image triggers, m times Blend.
Poisoned training sample number j (in index order) gets trigger j mod m, so every trigger gets its share
(the sample order is itself random). Test image j gets trigger j mod m: the ASR averages all m triggers.
"""

from typing import Literal

import torch

from eigenguard.attacks.base import Attack
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option

PATCH = 3


@component
class MultiTrigger(Attack):
    name = "multi-trigger"

    m: int = option(40, "number of distinct triggers (held in memory at full size)", "[1, 1000]")
    kind: Literal["patch", "blend"] = option("patch", "random 3 x 3 patches, or random full-image blends")
    alpha: float = option(0.1, "weight of a blend trigger", "(0, 1]")

    def __post_init__(self) -> None:
        super().__post_init__()
        c, h, w = self.image_shape
        if self.kind == "patch" and (h < PATCH or w < PATCH):
            raise EigenguardError(f"multi-trigger patches need images of at least {PATCH}x{PATCH}, got {h}x{w}")
        g = torch.Generator().manual_seed(self.seed)
        if self.kind == "patch":
            bits = torch.randint(0, 2, (self.m, PATCH, PATCH), generator=g, dtype=torch.uint8) * 255
            rows = torch.randint(0, h - PATCH + 1, (self.m,), generator=g)
            cols = torch.randint(0, w - PATCH + 1, (self.m,), generator=g)
            self.patterns = torch.zeros(self.m, c, h, w, dtype=torch.uint8)
            self.masks = torch.zeros(self.m, c, h, w, dtype=torch.bool)
            for i in range(self.m):  # m <= a few hundred, once at construction
                r, q = int(rows[i]), int(cols[i])
                self.patterns[i, :, r : r + PATCH, q : q + PATCH] = bits[i]
                self.masks[i, :, r : r + PATCH, q : q + PATCH] = True
            self.positions = torch.stack([rows, cols], dim=1)
        else:
            self.patterns = torch.randint(0, 256, (self.m, c, h, w), generator=g, dtype=torch.uint8)

    def which(self, n: int, device: torch.device) -> torch.Tensor:
        """Trigger index of each of n images: j mod m."""
        return torch.arange(n, device=device) % self.m

    def apply_trigger(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Stamp trigger `which[j]` on image j."""
        patterns = self.patterns.to(images.device)[which]
        if self.kind == "patch":
            return torch.where(self.masks.to(images.device)[which], patterns, images)
        blended = self.alpha * patterns.float() + (1.0 - self.alpha) * images.float()
        return blended.round_().clamp_(0, 255).to(torch.uint8)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply_trigger(images, self.which(len(images), images.device))

    def describe(self) -> dict[str, object]:
        described = super().describe()  # a patch trigger has no alpha: its record leaves it out
        return described if self.kind == "blend" else {k: v for k, v in described.items() if k != "alpha"}
