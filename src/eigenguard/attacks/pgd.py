"""Untargeted L-inf PGD (Madry et al., 2018) on uint8 images: push each image away from its own label.

Works on the [0, 255] pixel scale, so the budget is exact in the units the images are stored in: the
result, rounded back to uint8, never differs from the input by more than floor(255 * epsilon) per pixel.
Starts from the clean image (no random start), so it is deterministic given the model.
"""

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.training.augment import Normalize


def pgd_linf(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize: Normalize,
    *,
    epsilon: float,
    steps: int,
    step_size: float,
    batch_size: int = 512,
) -> torch.Tensor:
    """Adversarial versions of uint8 `images` (N, C, H, W) that raise the model's loss on `labels`.

    epsilon and step_size are fractions of the pixel range (16/255 means 16 grey levels). The model is run
    in eval mode (BatchNorm uses its running statistics) and its training mode is restored after.
    """
    budget = float(int(255 * epsilon + 1e-6))  # whole grey levels, so rounding cannot leave the ball
    step = 255 * step_size
    was_training = model.training
    model.eval()
    out = torch.empty_like(images)
    try:
        for start in range(0, len(images), batch_size):
            clean = images[start : start + batch_size].float()
            y = labels[start : start + batch_size]
            adv = clean.clone()
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(normalize(adv)), y)
                (grad,) = torch.autograd.grad(loss, adv)
                with torch.no_grad():
                    adv = adv + step * grad.sign()
                    adv = torch.minimum(torch.maximum(adv, clean - budget), clean + budget).clamp_(0, 255)
            adv = adv.detach().round_()
            out[start : start + batch_size] = torch.minimum(torch.maximum(adv, clean - budget), clean + budget).to(
                torch.uint8
            )
    finally:
        model.train(was_training)
    return out
