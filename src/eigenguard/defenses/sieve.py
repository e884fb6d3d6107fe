"""The guard as a sieve: this project's own method (not from a paper), built on EigenGuard's refusals.

The `sieve` detector (detectors/refusals.py: steps 1-4b there) flags the images a guarded model refuses
or finds unlike any class; this defense then
  5. trains a fresh model on what is left (`flagged: drop`) or on every image with the flagged ones
     relabelled as the guard predicts (`flagged: relabel`), plainly (`then: none`) or with PDB in front
     of the same split (`then: pdb`, PDB's defaults).
Its options of steps 1-4b are the detector's, with the defaults of the sieve's first version (the
detector's are the measured best: docs/results/clean-model.md). Where it flags nothing (`no_target`), the
fresh model trains on every image. The report gives the target estimate with
every class's refusal rate, the split's precision and recall (before widening too) and the AUROC of the
guarded model's loss as a poison score (ground truth used for the report only).
"""

from typing import Any, Literal

import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.defenses.pdb import PDB
from eigenguard.detectors import Detection, DetectionContext
from eigenguard.detectors.loss_isolation import LossIsolation
from eigenguard.detectors.refusals import GuardRefusals, Rule, Target
from eigenguard.options import component, option, option_like


@component
class Sieve(Defense):
    name = "sieve"

    sieve_epochs: int | None = option_like(GuardRefusals, "sieve_epochs", default=None)
    rule: Rule = option_like(GuardRefusals, "rule", default="target-refusals")
    flagged: Literal["drop", "relabel"] = option("drop", "drop the flagged images, or relabel them as the guard does")
    then: Literal["none", "pdb"] = option("none", "train the final model plainly, or with PDB in front")
    target: Target = option_like(GuardRefusals, "target", default="spread")
    widen: Literal["none", "trigger"] = option_like(GuardRefusals, "widen", default="none")
    no_target: Literal["flag", "nothing", "abl"] = option_like(GuardRefusals, "no_target")

    def rebuild(self, model: nn.Module) -> None:
        if self.then == "pdb":
            PDB().rebuild(model)

    def detector(self) -> GuardRefusals:
        return GuardRefusals(
            sieve_epochs=self.sieve_epochs, rule=self.rule, target=self.target, widen=self.widen,
            no_target=self.no_target,
        )  # fmt: skip

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        train, detector = ctx.train_set, self.detector()
        predicted, losses, report = detector.read(ctx.trainer, train, ctx.config, ctx.poison_indices)

        def isolate() -> Detection:  # ABL's isolation, only where the guard names no target (no_target: abl)
            return LossIsolation().detect(DetectionContext(ctx.config, ctx.trainer, train, ctx.backdoored))

        split = detector.split(predicted, losses, train, report, isolate)
        if split.widened:
            report["first_split"] = ctx.precision_recall(torch.nonzero(split.first).flatten())
        flagged = torch.nonzero(split.mask).flatten()
        report |= {
            "estimated_target": split.target,
            "split": ctx.set_aside(flagged, "dropped" if self.flagged == "drop" else "relabelled by the guard"),
            "loss_auroc": ctx.auroc(losses),
        }
        keep = torch.ones(len(train), dtype=torch.bool, device=train.images.device)
        if self.flagged == "drop":
            keep[flagged] = False
            kept = train.subset(torch.nonzero(keep).flatten())
        else:
            labels = train.labels.clone()
            labels[flagged] = predicted[flagged]
            kept = ImageDataset(train.images, labels, train.classes, train.mean, train.std)
        poisoned = ctx.poisoned_mask(keep.device)
        rest = DefenseContext(
            ctx.config, ctx.trainer, kept, ctx.clean_pool, torch.nonzero(poisoned[keep]).flatten(), ctx.backdoored
        )
        if self.then == "pdb":
            model, report["pdb"] = PDB().run(rest)
        else:
            model = ctx.trainer.new_model()
            ctx.trainer.fit(model, kept, epochs=ctx.config.epochs)
        report["trained_on"] = len(kept)
        return model, report
