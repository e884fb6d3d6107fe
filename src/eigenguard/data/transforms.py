"""Data augmentation as batched tensor ops on the training device: no PIL, no per-sample loop.

Every function takes and returns uint8 batches (B, C, H, W) and draws from an explicit generator that
lives on the batch's device, so a seeded run is reproducible.
"""

import math

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` on every side, then cut a random HxW window per image (the CIFAR crop).

    One gather does the whole batch: per-image row and column index grids select the window. The result
    comes back in channels_last memory order, which is what the convolutions want on GPU anyway; with one
    channel, whose two orders are the same bytes, it gets plain NCHW strides: with the ambiguous strides
    channels_last gives a one-channel tensor, oneDNN's CPU backward (torch 2.14.1, AVX-512) corrupts memory at
    odd batch sizes (seen on an Intel Xeon: a ResNet-18 step at batch 27 segfaults; batch 28 does not).
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
    window = padded[batch, :, rows, cols]
    return window.permute(0, 3, 1, 2) if window.shape[-1] > 1 else window.view(b, 1, h, w)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def augment(images: torch.Tensor, crop_pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The training augmentation: a random crop after zero padding by `crop_pad` (0: none), then, with
    `flip`, a random mirror."""
    if crop_pad:
        images = random_crop(images, crop_pad, generator)
    return random_flip(images, generator) if flip else images


def random_resized_crop(
    images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:  # fmt: skip
    """A random box per image (area a fraction in `scale` of the image, aspect ratio log-uniform in `ratio`,
    clipped to the image) resized back to H x W, bilinear: the contrastive crop (SimCLR, SupCon). uint8
    in and out. The box is drawn once, not rejection-sampled as torchvision's, then clipped."""
    b, _, h, w = images.shape
    device = images.device
    area = torch.empty(b, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(b, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    box_w = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the width and height
    box_h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=device, generator=generator) * 2 - 1) * (1 - box_w)  # centre, [-1, 1] units
    cy = (torch.rand(b, device=device, generator=generator) * 2 - 1) * (1 - box_h)
    zero = torch.zeros_like(cx)
    theta = torch.stack([torch.stack([box_w, zero, cx], 1), torch.stack([zero, box_h, cy], 1)], 1)
    grid = F.affine_grid(theta, [b, images.shape[1], h, w], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def color_jitter(
    images: torch.Tensor, generator: torch.Generator, brightness: float = 0.4, contrast: float = 0.4,
    saturation: float = 0.4, hue: float = 0.1, p: float = 0.8, grayscale_p: float = 0.2,
) -> torch.Tensor:  # fmt: skip
    """SimCLR's colour distortion as batch tensor ops, uint8 in and out: with probability `p` a random
    brightness, contrast and saturation factor in [1 - x, 1 + x] and a hue rotation of up to `hue` of a
    turn (in YIQ space; for 3 channels), applied in that fixed order (torchvision shuffles it); then with
    probability `grayscale_p` the image turns grey. Single-channel images get brightness and contrast."""
    b, c = images.shape[:2]
    device = images.device
    x = images.float() / 255

    def factor(spread: float) -> torch.Tensor:
        return torch.empty(b, 1, 1, 1, device=device).uniform_(1 - spread, 1 + spread, generator=generator)

    def grey(v: torch.Tensor) -> torch.Tensor:
        if c != 3:
            return v
        return (0.299 * v[:, :1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:]).expand_as(v)

    on = (torch.rand(b, 1, 1, 1, device=device, generator=generator) < p).float()
    y = (x * factor(brightness)).clamp(0, 1)
    mean = grey(y).mean((1, 2, 3), keepdim=True)
    y = (mean + factor(contrast) * (y - mean)).clamp(0, 1)
    if c == 3:
        y = (grey(y) + factor(saturation) * (y - grey(y))).clamp(0, 1)
        angle = torch.empty(b, device=device).uniform_(-hue, hue, generator=generator) * 2 * math.pi
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=device)
        yiq = torch.einsum("ij,bjhw->bihw", to_yiq, y)
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        i, q = yiq[:, 1] * cos - yiq[:, 2] * sin, yiq[:, 1] * sin + yiq[:, 2] * cos
        yiq = torch.stack([yiq[:, 0], i, q], 1)
        y = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)
    x = on * y + (1 - on) * x
    gray = (torch.rand(b, 1, 1, 1, device=device, generator=generator) < grayscale_p).float()
    x = gray * grey(x) + (1 - gray) * x
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


class Normalize:
    """uint8 pixels -> float model input, (x / 255 - mean) / std folded into one multiply-add."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)
        self.shift = -m / s

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)
