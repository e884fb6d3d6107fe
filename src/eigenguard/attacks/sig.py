"""SIG (Barni et al., 2019): a clean-label attack whose trigger is a horizontal sinusoid.

x'[c, i, j] = clip(x[c, i, j] + delta * sin(2 * pi * j * f / W), 0, 255), on the [0, 255] pixel scale:
the signal varies along the width (column j), is constant down each column and the same on every channel.
delta = 20 and f = 6 as in Barni et al. and the paper.

Clean-label: the poisons are target-class training images, labels unchanged; the default rate is the
paper's 80% of the target class. At test time the signal is added to every non-target test image.
"""

import math
from typing import ClassVar

import torch

from eigenguard.attacks.base import Attack
from eigenguard.errors import EigenguardError
from eigenguard.registry import Ranges


class SIG(Attack):
    name = "sig"
    RANGES: ClassVar[Ranges] = {"delta": (0, 255), "freq": (0, None)}
    clean_label = True
    default_rate = 0.8

    def __init__(
        self, image_shape: tuple[int, int, int], target: int = 0, seed: int = 0, delta: float = 20.0, freq: float = 6.0
    ) -> None:
        super().__init__(image_shape, target, seed)
        if not delta > 0:
            raise EigenguardError(f"sig delta {delta} must be > 0 (pixel units on [0, 255])")
        if not freq > 0:
            raise EigenguardError(f"sig freq {freq} must be > 0 (periods across the image width)")
        _, _, w = self.image_shape
        if not freq < w / 2:  # at f = W/2 the sampled sinusoid is sin(pi * j) = 0 everywhere
            raise EigenguardError(f"sig freq {freq} must be below half the image width ({w / 2:g}) to be visible")
        self.delta, self.freq = float(delta), float(freq)
        columns = torch.arange(w, dtype=torch.float32)
        self.signal = self.delta * torch.sin(2 * math.pi * columns * self.freq / w)  # (W,), broadcast over C, H

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        out = images.float() + self.signal.to(images.device)
        return out.round_().clamp_(0, 255).to(torch.uint8)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "delta": self.delta, "freq": self.freq}
