"""Untargeted L-inf PGD (Madry et al., 2018) on uint8 images: push each image away from its own label.

Works on the [0, 255] pixel scale, so the budget is exact in the units the images are stored in: the
result, rounded back to uint8, never differs from the input by more than floor(255 * epsilon) per pixel.
`pgd_linf` starts from the clean image (no random start), so it is deterministic given the model.
`adversarial_training_loss` is the same attack inside training (random start, normalised units), for
the adversarially trained surrogate of the CLB attack.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.data.transforms import Normalize


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


def adversarial_training_loss(
    model: nn.Module,
    normalize: Normalize,
    *,
    epsilon: float,
    steps: int,
    generator: torch.Generator,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Madry et al.'s adversarial training as a `train_one_epoch` loss: cross-entropy on PGD examples.

    The returned loss gets the normalised batch the model just saw and replaces it by its worst case in
    the L-inf ball of `epsilon` (a fraction of the pixel range, so epsilon / std per channel in normalised
    units): a uniform random start, then `steps` signed-gradient steps of 2.5 * epsilon / steps, kept in
    the ball and in the valid pixel range. The model stays in training mode while attacking, as in Madry
    et al.; the logits of the clean forward are used only for the epoch's accuracy.
    """
    budget = 255.0 * epsilon * normalize.scale  # (1, C, 1, 1): epsilon in normalised units
    step = 2.5 * budget / max(steps, 1)
    low = normalize.shift
    high = normalize.shift + 255.0 * normalize.scale

    def loss(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        del logits
        clean = inputs.detach()
        noise = torch.rand(clean.shape, device=clean.device, generator=generator)
        adv = torch.minimum(torch.maximum(clean + (2 * noise - 1) * budget, low), high)
        for _ in range(steps):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), labels), adv)
            with torch.no_grad():
                adv = torch.minimum(torch.maximum(adv + step * grad.sign(), clean - budget), clean + budget)
                adv = torch.minimum(torch.maximum(adv, low), high)
        return F.cross_entropy(model(adv.detach()), labels)

    return loss
