"""PDB, Proactive Defensive Backdoor (Wei, Zha and Wu, NeurIPS 2024, arXiv 2405.16112).

The defender controls training, so it plants a backdoor of its own that dominates the attacker's:
  1. a defensive set: `ratio` of the training set (the same number from every given label), stamped with
     the defensive trigger and relabelled h(y) = (y + shift) mod K, appended `repeat` times to the training
     set (which keeps every original sample, poisons included);
  2. one plain cross-entropy training of a fresh model on the union, the run's recipe; each defensive copy
     is augmented on its own: with probability `scale_p` the whole image, trigger included, is scaled by
     0.5 + 0.5 U(0, 1), with probability `rotate_p` rotated by up to `rotate_degrees` (nearest, zero
     fill), then the recipe's crop and flip like every sample;
  3. at inference every input is stamped with the defensive trigger and the prediction inverted through
     h^-1 (`DefensiveStamp` and `LabelShift`, set as the model's `on_input` / `on_output`): the defensive
     trigger wins over the attacker's, so a triggered input gets h(its class) and then its class back.
Facts and values from the paper and its official code (shawkui/Proactive_Defensive_Backdoor, defense/pdb.py
and config/defense/pdb/*.yaml): a 7x7 square in the top-left corner set to 2.0 on every channel, in [0, 1]
pixel units before normalisation, i.e. outside the range an attacker's image can reach; ratio 0.1 drawn
once, per class; repeat 5; shift 1; scale p 0.2; rotation 10 degrees at p 0.5; the Gaussian-noise step of the
official code is off by default there (std 0) and is not implemented. The official code trains 100 epochs at
lr 0.01 (cosine); here the run's recipe and epochs, like every other training-time defense.
Where the defensive images come from (`source`): the official code draws them from the clean training set
(BackdoorBench keeps it), which a defender of a poisoned dataset does not have. `training` (the default,
no clean data) draws them from the training set as given, so some of them may be poisons (counted in the
report): a poison there carries the attacker's trigger and the defensive one, labelled h(target). `clean`
draws them from the defender's clean images (`clean_samples` of them, the same count per class, at most
ratio x the training set): the official code's setting, which uses clean data.
The stamp and the inversion act only in eval mode: in training the defensive images carry their stamp
already and every other image must reach the model unstamped. Both are per-sample (batch-independent).
"""

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import augment
from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.errors import EigenguardError
from eigenguard.models import Backbone
from eigenguard.options import component, option


class DefensiveStamp(nn.Module):
    """At inference, pastes `value` (per channel, in normalised units: a buffer saved with the model) into the
    top-left `size` x `size` square of every input. Training mode passes inputs through."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("value", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        x = x.clone()
        x[:, :, : self.size, : self.size] = self.value.to(x.dtype)[None, :, None, None]
        return x

    def extra_repr(self) -> str:
        return f"size={self.size}"


class LabelShift(nn.Module):
    """At inference, h^-1 on the logits: output class i gets the logit of h(i) = (i + shift) mod K.
    Training mode passes logits through (the defensive labels are h(y) already)."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.training else logits.roll(-self.shift, dims=1)

    def extra_repr(self) -> str:
        return f"shift={self.shift}"


def stamp_pixels(images: torch.Tensor, size: int, value: float) -> torch.Tensor:
    """Float images in [0, 1] pixel units with the top-left `size` x `size` square set to `value`."""
    images = images.clone()
    images[:, :, :size, :size] = value
    return images


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Each image rotated about its centre by its angle, nearest neighbour, zero outside (torchvision's
    RandomRotation defaults)."""
    theta = degrees * (math.pi / 180)
    cos, sin, zero = theta.cos(), theta.sin(), torch.zeros_like(theta)
    affine = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(affine, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def per_class_choice(labels: torch.Tensor, count: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """`count` // num_classes indices of every label (all of a label that has fewer), sorted."""
    each = count // num_classes
    chosen = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(members), generator=generator, device=generator.device)
        chosen.append(members[order[:each].to(members.device)])
    return torch.cat(chosen).sort().values


@component
class PDB(Defense):
    name = "pdb"

    ratio: float = option(0.1, "defensive images, a fraction of the training set (the same number per class)", "(0, 1]")
    repeat: int = option(5, "times the defensive set is appended", "[1, 100]")
    size: int = option(7, "side of the defensive trigger, top-left, in pixels", ">= 1")
    value: float = option(2.0, "the trigger's value, in normalised units (outside an image's reach)", "[-255, 255]")
    shift: int = option(1, "defensive labels h(y) = (y + shift) mod K", ">= 1")
    scale_p: float = option(0.2, "probability a defensive image is scaled", "[0, 1]")
    rotate_p: float = option(0.5, "probability a defensive image is rotated", "[0, 1]")
    rotate_degrees: float = option(10.0, "largest rotation, degrees", "[0, 180]")
    source: Literal["training", "clean"] = option("training", "where the defensive images come from")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.needs_clean_pool = self.source == "clean"

    def rebuild(self, model: nn.Module) -> None:
        if not isinstance(model, Backbone):
            raise EigenguardError(f"pdb needs one of eigenguard's models, got {type(model).__name__}")
        channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
        device = next(model.parameters()).device
        model.on_input = DefensiveStamp(channels, self.size).to(device)
        model.on_output = LabelShift(self.shift)

    def defensive_set(self, ctx: DefenseContext) -> tuple[ImageDataset, torch.Tensor]:
        """The images that carry the defensive trigger, with their given labels, and their indices into the
        training set (empty when they come from the defender's clean images)."""
        train = ctx.train_set
        pool = ctx.clean_pool if self.source == "clean" else train
        generator = torch.Generator(device=pool.images.device).manual_seed(ctx.config.seed + 40)
        count = max(train.num_classes, round(self.ratio * len(train)))
        chosen = per_class_choice(pool.labels, count, train.num_classes, generator)
        from_training = chosen if self.source == "training" else chosen[:0]
        return pool.subset(chosen), from_training

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        t, train = ctx.trainer, ctx.train_set
        _, h, w = train.image_shape
        k = train.num_classes
        if self.size >= min(h, w):
            raise EigenguardError(f"invalid defense option size = {self.size}: must be < the image side {min(h, w)}")
        if self.shift % k == 0:
            raise EigenguardError(f"invalid defense option shift = {self.shift}: must not be a multiple of {k} classes")
        defensive, from_training = self.defensive_set(ctx)
        n = len(train)
        copies = torch.arange(len(defensive), device=defensive.images.device).repeat(self.repeat)
        union = ImageDataset(
            torch.cat([train.images, defensive.images[copies]]),
            torch.cat([train.labels, (defensive.labels[copies] + self.shift) % k]),
            train.classes,
            train.mean,
            train.std,
        )
        model = t.new_model()
        self.rebuild(model)
        stamp = model.on_input
        assert isinstance(stamp, DefensiveStamp)
        mean = torch.tensor(train.mean, device=t.device)
        std = torch.tensor(train.std, device=t.device)
        stamp.value.copy_((self.value - mean) / std)
        recipe = t.recipe(ctx.config.epochs)

        def make_batch(idx: torch.Tensor) -> torch.Tensor:
            x = union.images[idx].float() / 255
            defensive = torch.nonzero(idx >= n).flatten()
            if len(defensive):
                x[defensive] = self.augment_defensive(x[defensive], t.generator)
            x = augment(x, recipe.crop_pad, recipe.flip, t.generator)
            return (x - mean[None, :, None, None]) / std[None, :, None, None]

        t.fit(model, union, epochs=ctx.config.epochs, make_batch=make_batch)
        report = {
            "defensive_images": len(defensive),
            "defensive_copies": len(copies),
            "defensive_poisoned": ctx.precision_recall(from_training)["flagged_poisoned"],
        }
        return model, report

    def augment_defensive(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Stamp, then PDB's own augmentation of defensive images (float, [0, 1] pixel units)."""
        b, device = x.shape[0], x.device
        x = stamp_pixels(x, self.size, self.value)
        scaled = torch.rand(b, device=device, generator=generator) < self.scale_p
        factor = 0.5 + 0.5 * torch.rand(b, device=device, generator=generator)
        x = x * torch.where(scaled, factor, torch.ones_like(factor))[:, None, None, None]
        rotated = torch.rand(b, device=device, generator=generator) < self.rotate_p
        angle = torch.empty(b, device=device).uniform_(-self.rotate_degrees, self.rotate_degrees, generator=generator)
        return rotate(x, torch.where(rotated, angle, torch.zeros_like(angle)))
