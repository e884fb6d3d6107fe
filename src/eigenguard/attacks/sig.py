"""SIG (Barni et al., 2019): a clean-label attack whose trigger is a horizontal sinusoid.

x'[c, i, j] = clip(x[c, i, j] + delta * sin(2 * pi * j * f / W), 0, 255), on the [0, 255] pixel scale:
the signal varies along the width (column j), is constant down each column and the same on every channel.
delta = 20 and f = 6 as in Barni et al. and the paper.

Clean-label: the poisons are target-class training images, labels unchanged; the default rate is the
paper's 80% of the target class. At test time the signal is added to every non-target test image.
"""

import math

import torch

from eigenguard.attacks.base import Attack
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option


@component
class SIG(Attack):
    name = "sig"
    clean_label = True
    default_rate = 0.8

    delta: float = option(20.0, "amplitude of the sinusoid, in pixel units on [0, 255]", "(0, 255]")
    freq: float = option(6.0, "periods across the image width", "> 0")

    def __post_init__(self) -> None:
        super().__post_init__()
        _, _, w = self.image_shape
        if not self.freq < w / 2:  # at f = W/2 the sampled sinusoid is sin(pi * j) = 0 everywhere
            raise EigenguardError(f"invalid option freq = {self.freq} for attack 'sig'; allowed: below {w / 2:g}")
        columns = torch.arange(w, dtype=torch.float32)
        self.signal = self.delta * torch.sin(2 * math.pi * columns * self.freq / w)  # (W,), broadcast over C, H

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        out = images.float() + self.signal.to(images.device)
        return out.round_().clamp_(0, 255).to(torch.uint8)
