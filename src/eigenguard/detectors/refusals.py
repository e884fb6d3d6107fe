"""The guard's refusals as a detector (`sieve`): this project's own method (not from a paper), built on
EigenGuard's refusals; the `sieve` defense trains a plain model on what it leaves (defenses/sieve.py).

A guarded model does not learn what the guard flattens: on a dirty-label attack it stops, it keeps
predicting a poisoned image's true class, so it contradicts the label the attacker gave. Those
contradictions (refusals) concentrate on the attack's target class, the label every poison carries.
  1. train the guarded model (EigenGuard, the paper's options) on the poisoned set, `sieve_epochs` epochs;
  2. read every training image once, un-augmented, each alone (the guard's per-sample inference): its
     prediction and its loss under the given label; a refusal is a prediction other than the given label;
  3. estimate the target class (`target`): `spread`, the given label whose refusals reach the most
     classes: the median, over the other classes j, of how many images labelled c the guard puts in j. An
     all-to-one attack's poisons come from every class, so its target's refusals go everywhere, while a
     hard class's own errors go to a few similar classes (Fashion-MNIST's shirts to T-shirts, pullovers
     and coats, at a higher rate than the target's); `rate`, the given label with the highest refusal rate;
     `bimodal`, the given label whose log-losses split best in two (Otsu's between-group share of the
     variance: 2/pi for one normal group, near 1 for two apart), for a guard that refuses the poisons (their
     loss is high) as for one that learns them (their loss falls below any clean image's of that class);
  3b. where the target's evidence is under TARGET_LIFT (2) times the other classes' median (no class stands
     out: clean data, or a clean-label attack the guard neither refuses nor learns apart), `no_target`:
     `flag` goes on as if it did, `nothing` flags nothing, `abl` runs ABL's isolation (detectors/
     loss_isolation.py, its defaults) and, where its flagged images name a class by TARGET_LIFT times their
     share, flags those labelled with it and widens them (step 4b); else nothing;
  4. flag (`rule`): `target-refusals` the refusals whose given label is the estimated target;
     `refusals` every refusal; `target-outliers` the group of the target's Otsu split whose mean log-loss
     lies farther from the median of the other classes' median log-losses (poisons are unlike any class);
  4b. widen the flagged set (`widen: trigger`): the flagged images labelled with the target, nearly all
     poisons, show what poisons have in common; the mean image difference between them and the target's
     unflagged images is a linear estimate of the trigger (with, for a dirty-label attack, the look of the
     classes the poisons came from). The target's unflagged images are projected on it and the high group of
     an Otsu split is flagged too: the poisons the first rule missed, at the price of some clean images.
The detector's defaults are the measured best (6 epochs, `bimodal`, `target-outliers`, `widen: trigger`,
`no_target: flag`); the sieve defense keeps its first version's (the run's epochs, `spread`,
`target-refusals`, no widening).
Score (suspects.csv's order): the flagged images first, then every image by its log-loss as a robust z-score
inside its class, negated where the target's outlying group is the low one (a guard that learned the
poisons). Target evidence (`class_scores`): for `bimodal`, each class's log-loss variance over its
within-group variance after Otsu's split (1 / (1 - share): about 2.75 for one normal group); for `spread`
and `rate`, those numbers. The guard trains with GuardedTraining's defaults (the paper's EigenGuard).
What the guarded model reads (predictions, losses) is cached (cache.py, under <cache>/sieve-guard/) with
the random streams after its training and its log rows, so the sieve's variants of one setting train the
guard once and a hit changes no result; the report says whether it was a hit (`sieve_cached`) and what the
guard's training took (`sieve_seconds`). No clean data; the ground truth reaches only the training log of
the defense's guard (how many anchors were poisons), never a decision.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from eigenguard.cache import cache_root, cached_tensors, digest, fingerprint
from eigenguard.config import TrainConfig, plain_weights_values
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.detectors.base import (
    TARGET_LIFT,
    Detection,
    DetectionContext,
    Detector,
    flagged_first,
    score_lift,
    share_lift,
    within_class_z,
)
from eigenguard.detectors.loss_isolation import LossIsolation
from eigenguard.guard import find_guards, inference_mode
from eigenguard.options import component, option, options_of
from eigenguard.training.evaluate import eval_logits
from eigenguard.training.guarded import GuardedTraining
from eigenguard.training.trainer import Trainer

Rule = Literal["target-refusals", "refusals", "target-outliers"]
Target = Literal["spread", "rate", "bimodal"]
EVIDENCE = {  # the report's key, and what it means, of each target estimate
    "spread": ("refusal_spread", "the median count of the class's images the guard puts in each other class"),
    "rate": ("refusal_rates", "the share of the class's images the guard refuses"),
    "bimodal": ("loss_separation", "the class's log-loss variance over its within-group variance (Otsu)"),
}


def confusion_matrix(predicted: torch.Tensor, given: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of images by given label (rows) and prediction (columns)."""
    return torch.bincount(given * num_classes + predicted, minlength=num_classes**2).view(num_classes, -1)


def refusal_rates(confusion: torch.Tensor) -> torch.Tensor:
    """For every class, the share of the images labelled so whose prediction differs (0 for an empty class)."""
    total = confusion.sum(1).float()
    return (total - confusion.diagonal().float()) / total.clamp(min=1)


def refusal_spread(confusion: torch.Tensor) -> torch.Tensor:
    """For every class c, the median over the other classes j of the count of images labelled c and predicted
    j (the off-diagonal row of the confusion matrix)."""
    k = confusion.shape[0]
    off = ~torch.eye(k, dtype=torch.bool, device=confusion.device)
    return confusion[off].view(k, k - 1).float().median(dim=1).values


def log_losses(losses: torch.Tensor) -> torch.Tensor:
    """log10 of the losses in float64; a loss that underflowed to 0 counts as 1e-12."""
    return losses.double().clamp(min=1e-12).log10()


def otsu(values: torch.Tensor) -> tuple[float, float]:
    """Otsu's split of 1-D values into a low and a high group: (threshold, between-group share of the
    variance). The threshold lies between two distinct values (low group: values <= threshold); fewer than
    two distinct values give (inf, 0.0)."""
    xs = values.double().sort().values
    n = len(xs)
    if n < 2 or xs[0] == xs[-1]:
        return float("inf"), 0.0
    sums = xs.cumsum(0)
    k = torch.arange(1, n, dtype=torch.float64, device=xs.device)
    low, high = sums[:-1] / k, (sums[-1] - sums[:-1]) / (n - k)
    between = k * (n - k) / n**2 * (low - high) ** 2
    between[xs[:-1] == xs[1:]] = -1.0  # a split inside a run of ties is not a split
    i = int(between.argmax())
    return float((xs[i] + xs[i + 1]) / 2), float(between[i] / xs.var(unbiased=False))


def loss_separation(losses: torch.Tensor, given: torch.Tensor, num_classes: int) -> list[float]:
    """For every class, Otsu's between-group share of the variance of its images' log-losses."""
    logs = log_losses(losses)
    return [otsu(logs[given == c])[1] for c in range(num_classes)]


def outliers(losses: torch.Tensor, given: torch.Tensor, target: int, num_classes: int) -> tuple[torch.Tensor, str]:
    """The target's Otsu group whose mean log-loss lies farther from the median of the other classes' median
    log-losses: (mask over all images, "low", "high" or "none" where the target has no split)."""
    logs = log_losses(losses)
    mine = given == target
    threshold, _ = otsu(logs[mine])
    low = mine & (logs <= threshold)
    high = mine & ~low
    if not bool(low.any()) or not bool(high.any()):
        return torch.zeros_like(mine), "none"
    others = [logs[given == c].median() for c in range(num_classes) if c != target and bool((given == c).any())]
    typical = torch.stack(others).median() if others else logs[~mine].median()
    far_low = (logs[low].mean() - typical).abs() > (logs[high].mean() - typical).abs()
    return (low, "low") if bool(far_low) else (high, "high")


def trigger_projection(
    images: torch.Tensor, seeds: torch.Tensor, pool: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """For every image of `pool` (a mask), its projection on mean(images[seeds]) - mean(images[pool]) after
    centring on the pool's mean (float64, pixels in [0, 1]); computed in chunks, the images stay uint8."""

    def mean(mask: torch.Tensor) -> torch.Tensor:
        rows = torch.nonzero(mask).flatten()
        total = sum(images[rows[i : i + chunk]].flatten(1).double().sum(0) for i in range(0, len(rows), chunk))
        return total / (255 * max(len(rows), 1))

    centre = mean(pool)
    direction = mean(seeds) - centre
    rows = torch.nonzero(pool).flatten()
    parts = [
        (images[rows[i : i + chunk]].flatten(1).double() / 255 - centre) @ direction for i in range(0, len(rows), chunk)
    ]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64, device=images.device)


def widen(images: torch.Tensor, given: torch.Tensor, target: int, flagged: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The target's unflagged images whose trigger projection (trigger_projection, seeded by the flagged
    images labelled `target`) falls in the high group of an Otsu split: (mask over all images, the split's
    between-group share of the variance). Nothing when no flagged image carries the target label."""
    extra = torch.zeros_like(flagged)
    seeds, pool = flagged & (given == target), ~flagged & (given == target)
    if not bool(seeds.any()) or int(pool.sum()) < 2:
        return extra, 0.0
    scores = trigger_projection(images, seeds, pool)
    threshold, share = otsu(scores)
    extra[torch.nonzero(pool).flatten()[scores > threshold]] = True
    return extra, share


def flag(predicted: torch.Tensor, given: torch.Tensor, target: int, rule: str) -> torch.Tensor:
    """Indices of the images a refusal `rule` flags (sorted)."""
    refused = predicted != given
    if rule == "target-refusals":
        refused &= given == target
    return torch.nonzero(refused).flatten()


class Split(NamedTuple):
    """A split of the training set: what is flagged, what was flagged before widening (step 4b), the
    estimated target (None: no class stood out and nothing is flagged), every class's target evidence."""

    mask: torch.Tensor
    first: torch.Tensor
    target: int | None
    evidence: torch.Tensor
    widened: bool


@component
class GuardRefusals(Detector):
    name = "sieve"
    needs_trained = False  # it trains its own guarded model

    sieve_epochs: int | None = option(6, "epochs of the guarded model (null: the run's)", ">= 1")
    rule: Rule = option("target-outliers", "which images are flagged (module docstring, step 4)")
    target: Target = option("bimodal", "how the target class is estimated (step 3)")
    widen: Literal["none", "trigger"] = option("trigger", "widen the flagged set along the estimated trigger (step 4b)")
    no_target: Literal["flag", "nothing", "abl"] = option(
        "flag", "where no class stands out (step 3b): flag as if it did, flag nothing, or ask ABL's isolation"
    )

    def entry(self, trainer: Trainer, data: ImageDataset, config: TrainConfig, logs_truth: bool) -> Path:
        """The guarded reading's cache entry: named by everything that decides it (and, for a scan, which
        cannot log how many anchors were poisons, a name of its own)."""
        settings = {
            "recipe": plain_weights_values(config),
            "guard": {"name": "eigenguard", **options_of(GuardedTraining())},
            "sieve_epochs": self.sieve_epochs or config.epochs,
            "device": trainer.device.type,
            "batches_on_entry": digest(trainer.generator.get_state().tolist()),
        }
        if not logs_truth:
            settings["anchors_poisoned"] = "unknown"
        return cache_root(config.cache_dir) / "sieve-guard" / f"{digest(settings, fingerprint(data))}.safetensors"

    def read_with_guard(
        self, trainer: Trainer, data: ImageDataset, epochs: int, poisoned: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Train the guarded model, then read every training image alone with it: predictions and losses under
        the given labels, with the random streams after the fit and its log rows (for the cache)."""
        t0 = time.perf_counter()
        guarded = GuardedTraining().train_guarded(trainer, data, epochs, phase="sieve", poisoned=poisoned)
        with inference_mode(find_guards(guarded), "per-sample"):
            logits = eval_logits(
                trainer.forward_of(guarded), data, trainer.normalize, trainer.config.eval_batch_size, trainer.amp
            )
        tensors = {
            "predicted": logits.argmax(1),
            "losses": F.cross_entropy(logits, data.labels, reduction="none"),
            "stream:batches": trainer.generator.get_state(),
            "stream:torch-global": torch.get_rng_state(),
            "sieve_seconds": torch.tensor(time.perf_counter() - t0, dtype=torch.float64),
            "sieve_log": trainer.log_tensor(("sieve",)),
        }
        return tensors, {"detector": self.name}

    def read(
        self, trainer: Trainer, data: ImageDataset, config: TrainConfig, poisoned: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """The guarded model's reading of `data`, from the cache or computed: (predictions, losses, report).
        `poisoned`: the truth, for the guard's training log only (a defense knows it in a benchmark)."""
        epochs = self.sieve_epochs or config.epochs
        stored, hit = cached_tensors(
            self.entry(trainer, data, config, poisoned is not None),
            lambda: self.read_with_guard(trainer, data, epochs, poisoned),
            trainer.device,
        )
        if hit:  # as if trained here: the random streams after the fit, its log rows, its place among the fits
            trainer.generator.set_state(stored["stream:batches"].cpu())
            torch.set_rng_state(stored["stream:torch-global"].cpu())
            trainer.log_again(stored["sieve_log"])
            trainer.fits += 1
        predicted, losses = stored["predicted"].to(data.labels.device), stored["losses"].to(data.labels.device)
        confusion = confusion_matrix(predicted, data.labels, data.num_classes)
        report = {
            "refusal_rates": [round(r, 4) for r in refusal_rates(confusion).tolist()],
            "refusal_spread": refusal_spread(confusion).tolist(),
            "loss_separation": [round(e, 4) for e in loss_separation(losses, data.labels, data.num_classes)],
            "confusion": confusion.tolist(),
            "sieve_cached": hit,
            "sieve_seconds": round(float(stored["sieve_seconds"]), 3),
        }
        return predicted, losses, report

    def split(
        self,
        predicted: torch.Tensor,
        losses: torch.Tensor,
        data: ImageDataset,
        report: dict[str, Any],
        isolate: Callable[[], Detection],
    ) -> Split:
        """Steps 3-4b on a reading; the target's lift, the outlier side and the widening's separation are added
        to `report`. `isolate` runs ABL's isolation on the same data (step 3b, `no_target: abl`)."""
        evidence = target_evidence(torch.tensor(report[EVIDENCE[self.target][0]], dtype=torch.float64), self.target)
        target, lift, _ = score_lift(evidence)
        report["target_lift"] = round(lift, 3)
        nothing = torch.zeros(len(data), dtype=torch.bool, device=data.labels.device)
        if lift < TARGET_LIFT and self.no_target == "nothing":
            return Split(nothing, nothing, None, evidence, widened=False)
        if lift < TARGET_LIFT and self.no_target == "abl":
            isolated = isolate()
            target, lift, _, _ = share_lift(isolated.flagged, data.labels, data.num_classes)
            report["abl_target_lift"] = round(lift, 3)
            if lift < TARGET_LIFT:
                return Split(nothing, nothing, None, evidence, widened=False)
            first = nothing.clone()
            first[isolated.flagged.to(first.device)] = True
            first &= data.labels == target  # the isolated images that carry the target's label seed the trigger
            extra, report["widen_separation"] = widen(data.images, data.labels, target, first)
            return Split(first | extra, first, target, evidence, widened=True)
        if self.rule == "target-outliers":
            mask, report["outlier_side"] = outliers(losses, data.labels, target, data.num_classes)
        else:
            mask = torch.zeros(len(data), dtype=torch.bool, device=data.labels.device)
            mask[flag(predicted, data.labels, target, self.rule)] = True
        first = mask
        if self.widen == "trigger":
            extra, report["widen_separation"] = widen(data.images, data.labels, target, mask)
            mask = mask | extra
        return Split(mask, first, target, evidence, widened=self.widen == "trigger")

    def detect(self, ctx: DetectionContext) -> Detection:
        data = ctx.train_set
        predicted, losses, report = self.read(ctx.trainer, data, ctx.config)
        split = self.split(predicted, losses, data, report, lambda: LossIsolation().detect(ctx))
        report["estimated_target"] = split.target
        z = within_class_z(log_losses(losses), data.labels)
        base = -z if report.get("outlier_side") == "low" else z
        return Detection(
            flagged_first(base, split.mask).cpu(),
            torch.nonzero(split.mask).flatten().cpu(),
            report,
            split.evidence,
            EVIDENCE[self.target][1],
        )


def target_evidence(values: torch.Tensor, target: str) -> torch.Tensor:
    """Per class, the number a target estimate compares (higher: more like the target): the bimodal share s
    as the variance over the within-group variance, 1 / (1 - s); the others as they are."""
    return 1 / (1 - values).clamp_min(1e-12) if target == "bimodal" else values
