"""What a detector is: it ranks the images of a training set by how suspicious they are, without clean data.

A detector receives a `DetectionContext`: the training set exactly as the victim (or the user) has it,
possibly poisoned, the run's `Trainer` (fresh models, the config's recipe and normalisation) and a
provider of the model trained on that set without a defense (the pipeline trains it once and caches it).
It returns a `Detection`: one score per image (higher: more suspicious, comparable across classes) and the
images its own decision rule flags. The ground truth never reaches a detector: the scan scores its output
against a planted attack afterwards (pipeline/scan.py).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.options import Configurable, component, options_of
from eigenguard.training.trainer import Trainer


@dataclass
class DetectionContext:
    config: TrainConfig
    trainer: Trainer
    train_set: ImageDataset
    trained: Callable[[], nn.Module]  # the model trained on train_set without a defense (cached)


@dataclass
class Detection:
    scores: torch.Tensor  # float64 (N,): higher is more suspicious, comparable across classes
    flagged: torch.Tensor  # int64 indices the detector's own rule flags, sorted
    report: dict[str, Any] = field(default_factory=dict)  # what the detector found, beyond the scores
    # per class, how strongly it looks like the backdoor's target (higher: more), and what that number is;
    # None: the scan judges by where the flagged images sit
    class_scores: torch.Tensor | None = None
    class_evidence: str = ""
    veto: str = ""  # why the detector names no class although its per-class scores would (empty: no veto)
    candidate: int | None = None  # the class its own rule weighs for the target (None: the highest score)


@component
class Detector(Configurable):
    """Base class. Subclasses set `name`, declare their options (options.py) and implement `detect`.

    `needs_trained`: the detector reads the model trained on the data (its features or outputs); the scan
    then also reports that model's class for each image.
    """

    role: ClassVar[str] = "detector"
    name: ClassVar[str] = "detector"
    needs_trained: ClassVar[bool] = True

    def detect(self, ctx: DetectionContext) -> Detection:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **options_of(self)}


def within_class_z(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each score as a robust z-score inside its class, (s - median) / (1.4826 MAD): per-class scores made
    comparable, so one ranking over the whole set puts a class's outliers first, whichever class."""
    scores = scores.double()
    z = torch.zeros_like(scores)
    for c in labels.unique().tolist():
        members = labels == c
        s = scores[members]
        median = s.median()
        mad = (s - median).abs().median() * 1.4826
        spread = mad if mad > 0 else s.std(unbiased=False).clamp_min(1e-12)  # a class of near-equal scores
        z[members] = (s - median) / spread
    return z


def flagged_first(scores: torch.Tensor, is_flagged: torch.Tensor) -> torch.Tensor:
    """`scores` lifted so every flagged image ranks above every other, each part in its own order: for a
    detector whose decision is a cluster or a class, not a score threshold."""
    lifted = scores.clone()
    lifted[is_flagged] += scores.max() - scores.min() + 1
    return lifted


def top_per_class(scores: torch.Tensor, labels: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ceil(fraction x n_c) highest-scoring images of every class c of two or more (sorted indices)."""
    flagged = []
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        count = min(len(members), math.ceil(fraction * len(members) - 1e-9))
        if count > 0 and len(members) >= 2:
            flagged.append(members[scores[members].topk(count).indices])
    return torch.cat(flagged).sort().values if flagged else torch.empty(0, dtype=torch.int64)


TARGET_LIFT = 2.0  # a class is named as the backdoor's target where its evidence is this many times the rest's


def without(values: torch.Tensor, index: int) -> torch.Tensor:
    """Every class's value but class `index`'s."""
    return torch.cat([values[:index], values[index + 1 :]])


def score_lift(class_scores: torch.Tensor, at: int | None = None) -> tuple[int, float, float]:
    """Class `at` (default: the one with the highest per-class score): (class, its score over the other
    classes' median, that median); inf where the median is 0 and the score is not."""
    scores = class_scores.double().cpu()
    best = int(scores.argmax()) if at is None else at
    rest = without(scores, best)
    reference = float(rest.median()) if len(rest) else 0.0
    lift = float(scores[best]) / reference if reference > 0 else (math.inf if scores[best] > 0 else 0.0)
    return best, lift, reference


def share_lift(
    ranked: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[int, float, torch.Tensor, torch.Tensor]:
    """The class most over-represented among the images `ranked`: (class, its share of them over its share of
    all images, the shares among them, the shares among all)."""
    labels = labels.cpu()
    share_top = torch.bincount(labels[ranked.cpu()], minlength=num_classes).double() / max(len(ranked), 1)
    share_all = torch.bincount(labels, minlength=num_classes).double() / len(labels)
    ratio = share_top / share_all.clamp_min(1e-12)
    best = int(ratio.argmax())
    return best, float(ratio[best]), share_top, share_all
