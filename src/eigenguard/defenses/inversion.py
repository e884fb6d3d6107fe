"""Trigger inversion, then retraining (`inversion`): this project's own defense, no clean data.

The `inversion` detector (detectors/inversion.py) reads the model trained on the data without a defense:
it names the class that a small universal perturbation reaches from the other classes far more than any
other, or whose images split most cleanly, or else (`confirm: any`) the class that images of nearly every
other class have pixel neighbours labelled with; it splits its images along their own top principal component,
three votes naming the poisons' side (and, widened, flags those that carry its pixel estimate of the
trigger). This defense drops the flagged images and trains a fresh model on the rest with the config's
recipe, as Spectral Signatures does with its own split (defenses/spectral_signatures.py).
Where no class is named it flags nothing, and the model it read, trained on every image with the same
recipe, is the one returned: a clean dataset costs the inversion alone, not a second training.
`read_epochs: N` reads a model trained here on every image for N epochs instead (the recipe's schedule over
N): the reader needs the backdoor, which a network learns in its first epochs, not the accuracy, so the
defense costs N/epochs of a training, the inversion and the retraining, where the full reader costs a whole
training (where nothing is named, the full recipe then trains on every image). `balance:
oversample` draws the target's kept images again for the retraining, up to the other classes' median
count (a clean-label attack such as SIG poisons most of its class, so its split leaves the class short);
it repeats any poison the split missed as well. Its cost is two trainings and the inversion (the first
training is the cached no-defense model in a benchmark; a user pays it). The report gives the detector's
findings and the split's precision and recall against the true poisons (ground truth for the report only).
"""

from typing import Any, Literal

import torch
from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.detectors import DetectionContext
from eigenguard.detectors.base import without
from eigenguard.detectors.inversion import TriggerInversion
from eigenguard.options import component, defaults_of, option, option_like, options_of


@component
class InversionRetraining(Defense):
    name = "inversion"
    needs_backdoored = True  # the detector reads it; the model returned is trained from scratch

    budget: float = option_like(TriggerInversion, "budget")
    steps: int = option_like(TriggerInversion, "steps")
    batch: int = option_like(TriggerInversion, "batch")
    images: int = option_like(TriggerInversion, "images")
    widen: Literal["none", "trigger"] = option_like(TriggerInversion, "widen")
    confirm: Literal["none", "split", "reach", "either", "any"] = option_like(TriggerInversion, "confirm")
    along: Literal["direction", "principal"] = option_like(TriggerInversion, "along")
    balance: Literal["none", "oversample"] = option(
        "none", "draw the target's kept images again, up to the other classes' median count, for the retraining"
    )
    read_epochs: int = option(
        0,
        "epochs of the model the detector reads: 0, the no-defense model of the config's recipe (cached in a "
        "benchmark); N, one trained here on every image with the recipe's schedule over N epochs (cheaper)",
        ">= 0",
    )

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        shared = defaults_of(TriggerInversion)  # the detector's options, declared above with option_like
        detector = TriggerInversion(**{k: v for k, v in options_of(self).items() if k in shared})
        train = ctx.train_set
        read, reader = ctx.backdoored, {}
        if self.read_epochs:
            short = ctx.trainer.new_model()
            rows = ctx.trainer.fit(short, train, epochs=self.read_epochs, phase="read")
            read, reader = (lambda: short), {k: rows[-1].get(k) for k in ("acc", "asr")}
        detection = detector.detect(DetectionContext(ctx.config, ctx.trainer, train, read))
        keep = torch.ones(len(train), dtype=torch.bool, device=train.images.device)
        keep[detection.flagged.to(keep.device)] = False
        kept = torch.nonzero(keep).flatten()
        target = detection.report["estimated_target"]
        extra = 0
        if self.balance == "oversample" and target is not None:
            kept, extra = oversampled(kept, train.labels, target, ctx.config.seed + 16)
        retrained = len(detection.flagged) > 0
        if retrained:
            model = ctx.trainer.new_model()
            ctx.trainer.fit(model, train.subset(kept), epochs=ctx.config.epochs, phase="retrain")
        elif self.read_epochs:  # nothing to drop, but the model read is short of the recipe: train it whole
            model = ctx.trainer.new_model()
            ctx.trainer.fit(model, train, epochs=ctx.config.epochs, phase="train")
        else:  # nothing to drop: the model read was trained on every image already
            model = ctx.backdoored()
        report = dict(detection.report)
        report |= {
            "split": ctx.set_aside(detection.flagged, "dropped before the retraining"),
            "trained_on": int(keep.sum()),
            "oversampled": extra,
            "retrained": retrained,
            **({"reader": {"epochs": self.read_epochs, **reader}} if self.read_epochs else {}),
        }
        return model, report


def oversampled(kept: torch.Tensor, labels: torch.Tensor, target: int, seed: int) -> tuple[torch.Tensor, int]:
    """`kept` (indices) with the target's kept images drawn again at random until the target holds the other
    classes' median count (a split that removes most of a class, as SIG's 80% of it, leaves it short):
    (the indices, how many were added)."""
    counts = torch.bincount(labels[kept].cpu(), minlength=int(labels.max()) + 1)
    mine = kept[labels[kept] == target]
    short = int(without(counts, target).median()) - len(mine)
    if short <= 0 or len(mine) == 0:
        return kept, 0
    draws = torch.randint(len(mine), (short,), generator=torch.Generator().manual_seed(seed)).to(mine.device)
    return torch.cat([kept, mine[draws]]), short
