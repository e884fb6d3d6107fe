"""D-BR (Chen, Wu & Wang, NeurIPS 2022, "Effective backdoor defense by exploiting sensitivity of poisoned
samples"): find the poisons by how much a transformation moves their features, then unlearn them.

Poisoned samples are more sensitive to transformations than clean ones in a model that learned the
backdoor. D-BR trains the poisoned set without defense, no clean data needed, in three steps:
1. Sample distinguishment (SD). A model of the defender's own is trained on the poisoned set without
   augmentation for `sd_epochs` (2; SGD lr `sd_lr` 0.01), then fine-tuned `intra_epochs` (10) with the
   loss L_intra alone: the mean cosine similarity between the batch's class centres of the penultimate
   features (diagonal zeroed), which pushes the centres apart.
2. FCT: per training image, the mean squared difference between the penultimate features (eval mode) of
   the image and of one transformed copy, a random rotation in [-180, 180] degrees and a random shift of
   up to 20% of the size (`rotation`, `translate`; torchvision's RandomRotation(180) + RandomAffine
   translate (0.2, 0.2) of the official code, zeros filled in). Global thresholds on the sorted scores:
   the lowest `clean_ratio` (20%) are taken as clean, the highest `poison_ratio` (5%) as poisoned.
3. Backdoor removal (BR), on the backdoored model (the cached no-defense model): `epochs` (20) times one
   pass of gradient ascent on the cross-entropy of the flagged poisons (their given labels), then one pass
   of descent on the flagged clean samples, one SGD optimizer (momentum 0.9, wd 5e-4) at the fixed lr
   `lr` 1e-4, batch 128, crop and flip, as the official code (SCLBD/Effective_backdoor_defense,
   unlearn_relearn.py).
The last epoch's model is returned: the official code keeps the epoch with the best test ACC - ASR, which
a defender cannot compute (BackdoorBench also returns the last).

Our choices: the SD model's lr is constant (the official cosine has T_max = 100 epochs over 12, a fall of
less than 4%), and its two fits each start a fresh SGD momentum. BR checkpoints after every epoch as the
run's phase "d-br". The split's precision and recall against the true poisons are reported.

The SD model is cached (cache.py's mechanism, under <cache>/d-br-sd/), so D-BR and D-ST of one setting
train it once: its key hashes the run's recipe (`plain_weights_values`), the SD options, the poisoned
training set's fingerprint, the device type and the state of the trainer's batch stream on entry. The
entry holds the weights, that stream's state after the two fits (with torch's global RNG) and the fits'
log rows, all restored on a hit, so a hit gives the same model, result and log as training it (tested).
The report says whether it was a hit (`sd_cached`) and what training it took (`sd_seconds`, measured by
the run that trained it): the `defense_seconds` of a hit leave that out.
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
from eigenguard.defenses.abl import ascent_loss
from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.defenses.fine_pruning import classifier
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option
from eigenguard.training.features import FeatureTap
from eigenguard.training.loop import train_one_epoch


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
class SensitivitySplit(Defense):
    """D-BR's sample distinguishment: the SD model, the FCT scores and the split. D-BR (below) unlearns the
    flagged poisons with it; D-ST (dst.py) retrains from scratch with it."""

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
                f"invalid options clean_ratio = {self.clean_ratio}, poison_ratio = {self.poison_ratio} for defense"
                f" '{self.name}'; allowed: a sum <= 1"
            )

    # -- 1. sample distinguishment --------------------------------------------------------------

    def distinguishing_model(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
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

    def sd_entry(self, ctx: DefenseContext) -> Path:
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

    def train_distinguishing(
        self, model: nn.Module, ctx: DefenseContext
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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
    def sensitivity(self, model: nn.Module, data: ImageDataset, ctx: DefenseContext) -> torch.Tensor:
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

    # -- 3. backdoor removal ----------------------------------------------------------------------


@component
class DBR(SensitivitySplit):
    name = "d-br"
    needs_backdoored = True
    final_evaluation = True

    epochs: int = option(20, "epochs of backdoor removal (ascent on the flagged poisons, descent on the clean)", ">= 1")
    lr: float = option(1e-4, "its fixed SGD lr", "> 0")
    batch_size: int = option(128, "its batch size", ">= 1")

    def remove(self, model: nn.Module, clean: ImageDataset, poisoned: ImageDataset, ctx: DefenseContext) -> None:
        t = ctx.trainer
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
        start = t.resume_phase(self.name, {"model": model}, {"sgd": optimizer})  # resumed: after epoch `start`
        recipe = t.recipe(self.epochs)  # the run's augmentation
        common = {"batch_size": self.batch_size, "normalize": t.normalize, "generator": t.generator,
                  "crop_pad": recipe.crop_pad, "flip": recipe.flip, "amp": t.amp}  # fmt: skip
        for epoch in range(start + 1, self.epochs + 1):
            up = train_one_epoch(
                model, optimizer, scheduler, poisoned.images, poisoned.labels, loss_fn=ascent_loss, **common
            )
            down = train_one_epoch(model, optimizer, scheduler, clean.images, clean.labels, **common)
            t.log({"phase": self.name, "epoch": epoch, "train_loss": round(down["train_loss"], 6),
                   "unlearn_loss": round(-up["train_loss"], 6)})  # fmt: skip
            t.save_phase(self.name, epoch, self.epochs, {"model": model}, {"sgd": optimizer})

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        # a resumed run passes through here again: the SD model comes from the cache (or, if it was cut while
        # training it, its fits load from their checkpoints), the scores are recomputed (eval mode, seeded),
        # and BR continues from its last epoch
        sd_model, sd_report = self.distinguishing_model(ctx)
        clean, poisoned = self.split(self.sensitivity(sd_model, ctx.train_set, ctx))
        del sd_model
        model = ctx.backdoored()
        self.remove(model, ctx.train_set.subset(clean), ctx.train_set.subset(poisoned), ctx)
        split = {"clean_split": ctx.precision_recall(clean), "poison_split": ctx.precision_recall(poisoned)}
        return model, {**split, **sd_report}
