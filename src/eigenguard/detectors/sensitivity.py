"""D-BR's sample distinguishment (Chen, Wu & Wang, NeurIPS 2022, "Effective backdoor defense by exploiting
sensitivity of poisoned samples") as a detector: in a model that learned the backdoor, a transformation
moves a poisoned image's features more than a clean one's.

1. The SD model: trained on the data without augmentation for `sd_epochs` (2; SGD lr `sd_lr` 0.01), then
   fine-tuned `intra_epochs` (10) with L_intra alone, the mean cosine similarity between the batch's class
   centres of the penultimate features (diagonal zeroed), which pushes the centres apart.
2. FCT: per image, the mean squared difference between the penultimate features (eval mode) of the image
   and of one transformed copy, a random rotation in [-180, 180] degrees and a random shift of up to 20% of
   the size (`rotation`, `translate`; the official code's RandomRotation(180) + RandomAffine translate
   (0.2, 0.2), zeros filled in). Global thresholds on the sorted scores: the lowest `clean_ratio` (20%)
   are taken as clean, the highest `poison_ratio` (5%) as poisoned.
Score: the FCT; flagged: the poisoned share. The SD model is cached (the D-BR defense's module docstring
says how), so the `d-br` detector, D-BR and D-ST of one setting train it once. No clean data.
"""

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.cache import cache_root, cached_tensors, digest, fingerprint
from eigenguard.config import plain_weights_values
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.detectors.base import Detection, DetectionContext, Detector
from eigenguard.errors import EigenguardError
from eigenguard.options import Configurable, component, option
from eigenguard.training.features import FeatureTap, classifier


def centre_separation_loss(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """L_intra: the mean over the K x K matrix of cosine similarities between the batch's class centres
    (the classes present in it), its diagonal set to 0."""
    onehot = F.one_hot(labels, classes).to(features.dtype)
    counts = onehot.sum(0)
    present = counts > 0
    centres = (onehot.T @ features)[present] / counts[present, None]
    centres = F.normalize(centres, dim=1)
    similarity = centres @ centres.T
    return (similarity - torch.diag_embed(similarity.diagonal())).mean()


def rotate_and_shift(
    images: torch.Tensor, degrees: float, translate: float, generator: torch.Generator
) -> torch.Tensor:
    """Every float image (N, C, H, W) rotated by its own random angle in [-degrees, degrees] about the
    centre and shifted by up to `translate` of its width and height, zeros outside (bilinear)."""
    n = len(images)
    device = images.device
    angle = (torch.rand(n, generator=generator, device=device) * 2 - 1) * math.radians(degrees)
    shift = (torch.rand(n, 2, generator=generator, device=device) * 2 - 1) * 2 * translate  # [-1, 1] coordinates
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@component
class SensitivityScoring(Configurable):
    """D-BR's sample distinguishment: the SD model, the FCT scores and the split, with their options. The
    `d-br` detector ranks with it; the D-BR defense unlearns the flagged poisons and D-ST retrains without
    them (defenses/dbr.py, dst.py). `ctx` is a detection's or a defense's context (trainer, train_set,
    config)."""

    sd_epochs: int = option(2, "epochs of the SD model's plain fit", ">= 1")
    intra_epochs: int = option(10, "epochs of its fine-tuning with L_intra", ">= 0")
    sd_lr: float = option(0.01, "SGD lr of the SD model", "> 0")
    clean_ratio: float = option(0.2, "lowest-scoring fraction flagged clean", "(0, 1)")
    poison_ratio: float = option(0.05, "highest-scoring fraction flagged poisoned", "(0, 1)")
    rotation: float = option(180.0, "largest rotation of the FCT transformation, degrees", "[0, 360]")
    translate: float = option(0.2, "largest shift of the FCT transformation, a fraction of the size", "[0, 1]")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clean_ratio + self.poison_ratio > 1:
            raise EigenguardError(
                f"invalid options clean_ratio = {self.clean_ratio}, poison_ratio = {self.poison_ratio} for "
                f"{self.role} '{self.name}'; allowed: a sum <= 1"
            )

    # -- 1. sample distinguishment --------------------------------------------------------------

    def distinguishing_model(self, ctx: Any) -> tuple[nn.Module, dict[str, Any]]:
        """The SD model, from the cache or trained (and stored); with a report: `sd_cached`, `sd_seconds`."""
        t = ctx.trainer
        model = t.new_model(num_classes=ctx.train_set.num_classes, seed_offset=13)
        stored, hit = cached_tensors(self.sd_entry(ctx), lambda: self.train_distinguishing(model, ctx), t.device)
        record = {k: stored.pop(k) for k in ("stream:batches", "stream:torch-global", "sd_seconds", "sd_log")}
        if hit:  # as if trained here: the weights, the random streams after the fits, and the fits' log rows
            model.load_state_dict(stored)
            t.generator.set_state(record["stream:batches"].cpu())
            torch.set_rng_state(record["stream:torch-global"].cpu())
            t.log_again(record["sd_log"])
        return model, {"sd_cached": hit, "sd_seconds": round(float(record["sd_seconds"]), 3)}

    def sd_entry(self, ctx: Any) -> Path:
        """The SD model's cache entry: named by everything that decides it (see the module's docstring)."""
        t = ctx.trainer
        settings = {
            "recipe": plain_weights_values(ctx.config),
            "sd": {"sd_epochs": self.sd_epochs, "intra_epochs": self.intra_epochs, "sd_lr": self.sd_lr},
            "device": t.device.type,
            "batches_on_entry": digest(t.generator.get_state().tolist()),
        }
        key = digest(settings, fingerprint(ctx.train_set))
        return cache_root(ctx.config.cache_dir) / "d-br-sd" / f"{key}.safetensors"

    def train_distinguishing(self, model: nn.Module, ctx: Any) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """SD: `sd_epochs` of plain training without augmentation, then `intra_epochs` of L_intra alone.
        Returns the weights, the random streams' states after it and its log rows, for the cache."""
        t = ctx.trainer
        t0 = time.perf_counter()
        knobs: dict[str, Any] = {"lr": self.sd_lr, "schedule": "constant", "augment": False, "batch_size": 128}
        t.fit(model, ctx.train_set, epochs=self.sd_epochs, phase="sd-train", **knobs)
        if self.intra_epochs:
            tap = FeatureTap({"features": classifier(model)}, inputs=True)
            classes = ctx.train_set.num_classes

            def intra(_logits: torch.Tensor, labels: torch.Tensor, _inputs: torch.Tensor) -> torch.Tensor:
                return centre_separation_loss(tap.outputs["features"].flatten(1).float(), labels, classes)

            with tap:
                t.fit(model, ctx.train_set, epochs=self.intra_epochs, phase="sd-intra", loss_fn=intra, **knobs)
        tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        tensors["stream:batches"] = t.generator.get_state()
        tensors["stream:torch-global"] = torch.get_rng_state()
        tensors["sd_seconds"] = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
        tensors["sd_log"] = t.log_tensor(("sd-train", "sd-intra"))
        return tensors, {"defense": self.name}

    @torch.no_grad()
    def sensitivity(self, model: nn.Module, data: ImageDataset, ctx: Any) -> torch.Tensor:
        """FCT of every image: mean squared change of its penultimate features under one random
        rotation and shift."""
        t = ctx.trainer
        model.eval()
        generator = torch.Generator(device=data.images.device).manual_seed(t.config.seed + 14)
        scores = []
        with FeatureTap({"features": classifier(model)}, inputs=True) as tap:
            for start in range(0, len(data), t.config.eval_batch_size):
                x = data.images[start : start + t.config.eval_batch_size]
                model(t.normalize(x))
                plain = tap.outputs["features"].flatten(1).float()
                moved = rotate_and_shift(x.float(), self.rotation, self.translate, generator)
                model(t.normalize(moved))
                scores.append((plain - tap.outputs["features"].flatten(1).float()).pow(2).mean(1))
        return torch.cat(scores)

    def split(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flagged clean, flagged poisoned) indices: FCT at most the clean threshold, at least the poison one."""
        ordered = scores.sort().values
        n = len(scores)
        low, high = ordered[min(int(n * self.clean_ratio), n - 1)], ordered[n - int(n * self.poison_ratio)]
        return torch.nonzero(scores <= low).flatten(), torch.nonzero(scores >= high).flatten()


@component
class TransformationSensitivity(SensitivityScoring, Detector):
    name = "d-br"
    needs_trained = False  # it trains its own SD model

    def detect(self, ctx: DetectionContext) -> Detection:
        model, report = self.distinguishing_model(ctx)
        scores = self.sensitivity(model, ctx.train_set, ctx)
        clean, poisoned = self.split(scores)
        return Detection(scores.double().cpu(), poisoned.sort().values.cpu(), {**report, "flagged_clean": len(clean)})
