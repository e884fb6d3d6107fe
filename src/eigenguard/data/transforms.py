"""Data augmentation as batched tensor ops on the training device: no PIL, no per-sample loop.

Both functions take and return uint8 batches (B, C, H, W) and draw from an explicit generator that
lives on the batch's device, so a seeded run is reproducible.
"""

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` on every side, then cut a random HxW window per image (the CIFAR crop).

    One gather does the whole batch: per-image row and column index grids select the window. The result
    comes back in channels_last memory order, which is what the convolutions want on GPU anyway.
    """
    if pad == 0:
        return images
    b, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indices split by a slice put the broadcast dims first: (B, H, W, C).
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class Normalize:
    """uint8 pixels -> float model input, (x / 255 - mean) / std folded into one multiply-add."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)
        self.shift = -m / s

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)
