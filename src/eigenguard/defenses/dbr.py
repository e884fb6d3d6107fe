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

from typing import Any

import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses.abl import ascent_loss
from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.detectors.sensitivity import SensitivityScoring
from eigenguard.options import component, option
from eigenguard.training.loop import train_one_epoch


@component
class SensitivitySplit(SensitivityScoring, Defense):
    """D-BR's sample distinguishment as a defense's first step (detectors/sensitivity.py). D-BR (below)
    unlearns the flagged poisons with it; D-ST (dst.py) retrains from scratch with it."""


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
        split = {"clean_split": ctx.precision_recall(clean), "poison_split": ctx.set_aside(poisoned, "unlearned")}
        return model, {**split, **sd_report}
