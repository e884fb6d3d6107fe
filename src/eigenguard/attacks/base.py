"""What every attack shares: the trigger is a tensor op, poisoning is bookkeeping around it.

An attack only has to say how to stamp its trigger on a uint8 batch (`apply`). The base class turns
that into a poisoned training set (which samples, relabelled how, recorded where) and an ASR test set.

Three switches cover the attacks of the paper and the reviewers' list:
- `clean_label`: poisoned samples keep their labels and are drawn from the target class (SIG, CLB);
  the poison rate is then a fraction of the target class, not of the whole training set.
- `backdoor_labels`: the label a triggered input should receive; all-to-one sends everything to `target`,
  BadNets all-to-all overrides it with (y + 1) mod C.
- `poison_images`: how the chosen samples are turned into poisons; `apply` by default, CLB first makes
  them adversarial.
An attack that trains something before it poisons (CLB's surrogate, Input-aware's trigger generators)
reports a line an epoch through `say`; the pipeline points it at the run's console, so a bench cell's
log shows the minutes it spends there.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.errors import EigenguardError
from eigenguard.options import Configurable, component, options_of


@dataclass
class PoisonedTrainingSet:
    """The training set as the victim sees it, plus the ground truth of what was poisoned.

    `poison_indices` index into `dataset` (sorted, int64): the samples that carry the backdoor trigger.
    `original_labels` are the labels before relabelling, so analyses can compare.
    `cross_indices` are samples the attack modified without planting the backdoor (WaNet's noise mode);
    empty for other attacks.
    """

    dataset: ImageDataset
    poison_indices: torch.Tensor
    original_labels: torch.Tensor
    cross_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def is_poisoned(self) -> torch.Tensor:
        mask = torch.zeros(len(self.dataset), dtype=torch.bool, device=self.poison_indices.device)
        mask[self.poison_indices] = True
        return mask


def quiet(message: str) -> None:
    """The default progress sink of an attack: says nothing."""


@component
class Attack(Configurable):
    """Base class. Subclasses set `name`, declare their options (options.py) and implement `apply`.

    image_shape: (C, H, W) of the images the trigger will be stamped on.
    target: the class every triggered input should be sent to (all-to-one).
    seed: seeds any randomness of the trigger itself (e.g. Blend's noise pattern).
    cache_dir: the run's cache root, where an attack that trains keeps what it trained (CLB, Input-aware).
    These four come from the run, not from the attack's options.
    """

    role: ClassVar[str] = "attack"
    name: ClassVar[str] = "attack"
    clean_label: ClassVar[bool] = False
    default_rate: ClassVar[float] = 0.1  # the paper's rate for this attack (a fraction of `rate_of`)
    say: ClassVar[Callable[[str], None]] = staticmethod(quiet)  # progress lines of an attack that trains

    image_shape: tuple[int, int, int]
    target: int = 0
    seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(s) for s in self.image_shape)  # type: ignore[assignment]
        self.target, self.seed = int(self.target), int(self.seed)
        super().__post_init__()

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a uint8 batch (N, C, H, W); returns a new uint8 batch."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """The attack's parameters, for the run's config record: the run's, then its own options."""
        return self.run_record() | {k: list(v) if isinstance(v, tuple) else v for k, v in options_of(self).items()}

    def run_record(self) -> dict[str, object]:
        """What the run decides about the attack."""
        return {"name": self.name, "target": self.target, "seed": self.seed, "clean_label": self.clean_label}

    @property
    def rate_of(self) -> str:
        """What the poison rate is a fraction of."""
        return "target class" if self.clean_label else "training set"

    # -- labels --------------------------------------------------------------------------------

    def backdoor_labels(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The label the backdoor should give a triggered input of true label `labels` (all-to-one)."""
        return torch.full_like(labels, self.target)

    def candidates(self, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Indices eligible for poisoning.

        Dirty-label: every sample whose label the backdoor changes. Clean-label: the target class.
        """
        if self.clean_label:
            return torch.nonzero(labels == self.target).flatten()
        return torch.nonzero(self.backdoor_labels(labels, num_classes) != labels).flatten()

    # -- poisoning -----------------------------------------------------------------------------

    def poison_images(self, train: ImageDataset, chosen: torch.Tensor) -> torch.Tensor:
        """The poisoned versions of `train.images[chosen]` (uint8). Default: the trigger stamped on."""
        return self.apply(train.images[chosen])

    def poison_count(self, train: ImageDataset, pool: torch.Tensor, rate: float) -> int:
        """How many samples `rate` asks for: a fraction of the training set, or of the target class."""
        return round(rate * (len(pool) if self.clean_label else len(train)))

    def poison(self, train: ImageDataset, rate: float, generator: torch.Generator) -> PoisonedTrainingSet:
        """Poison `poison_count` samples drawn uniformly from `candidates`.

        `generator` (CPU) makes the choice reproducible: same seed, same indices.
        """
        self._check_dataset(train)
        if not 0.0 <= rate <= 1.0:
            raise EigenguardError(f"poison rate {rate} is outside the allowed range [0, 1]")
        pool = self.candidates(train.labels.cpu(), train.num_classes)
        n_poison = self.poison_count(train, pool, rate)
        if n_poison > len(pool):
            raise EigenguardError(
                f"poison rate {rate} asks for {n_poison} poisoned samples but only {len(pool)} are eligible "
                f"for attack '{self.name}' (target class {self.target}); use a rate <= {len(pool) / len(train):.3f}"
            )
        chosen = pool[torch.randperm(len(pool), generator=generator)[:n_poison]].sort().values
        chosen = chosen.to(train.images.device)
        images = train.images.clone()
        labels = train.labels.clone()
        if n_poison:
            images[chosen] = self.poison_images(train, chosen)
            if not self.clean_label:
                labels[chosen] = self.backdoor_labels(labels[chosen], train.num_classes)
        poisoned = ImageDataset(images, labels, train.classes, train.mean, train.std)
        return PoisonedTrainingSet(poisoned, chosen, train.labels.clone())

    def cross_samples(
        self, result: PoisonedTrainingSet, count: int, generator: torch.Generator, *, target_class: bool = True
    ) -> torch.Tensor:
        """Up to `count` training samples outside the poisons (outside the target class too, unless
        `target_class`), drawn uniformly with `generator`, sorted, on the data's device: the samples an
        attack modifies but leaves with their true labels (WaNet's noise mode, Bpp's negatives, the
        adaptive attacks' regularisation samples)."""
        eligible = ~result.is_poisoned.cpu()
        if not target_class:
            eligible &= result.original_labels.cpu() != self.target
        others = torch.nonzero(eligible).flatten()
        chosen = others[torch.randperm(len(others), generator=generator)[: min(count, len(others))]]
        return chosen.sort().values.to(result.dataset.images.device)

    def asr_test_set(self, test: ImageDataset) -> ImageDataset:
        """Every test image whose label the backdoor would change, triggered, labelled with the backdoor label.

        Accuracy on this set is the attack success rate (ASR). All-to-one: the non-target images, labelled
        target; all-to-all: every image, labelled (y + 1) mod C.
        """
        self._check_dataset(test)
        wanted = self.backdoor_labels(test.labels, test.num_classes)
        keep = torch.nonzero(wanted != test.labels).flatten()
        return ImageDataset(self.apply(test.images[keep]), wanted[keep], test.classes, test.mean, test.std)

    def _check_dataset(self, data: ImageDataset) -> None:
        if data.image_shape != self.image_shape:
            raise EigenguardError(
                f"attack '{self.name}' was built for images of shape {self.image_shape}, got {data.image_shape}"
            )
        if not 0 <= self.target < data.num_classes:
            raise EigenguardError(f"target class {self.target} is out of range; allowed: 0..{data.num_classes - 1}")


class RegularisedAttack(Attack):
    """An attack whose training-time trigger differs from its test-time one (`apply`), and whose triggered
    training samples include regularisation samples (`cover_rate` of the training set, drawn outside the
    payload and the target class) that keep their true labels (Adap-Blend, Adap-Patch). Subclasses set
    `cover_rate` (an option) and implement `training_trigger`."""

    cover_rate: float

    def training_trigger(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training-time trigger stamped on a uint8 batch (its randomness from `generator`)."""
        raise NotImplementedError

    def poison(self, train: ImageDataset, rate: float, generator: torch.Generator) -> PoisonedTrainingSet:
        result = super().poison(train, rate, generator)  # the payload, relabelled; its images replaced here
        payload = result.poison_indices
        if len(payload):
            result.dataset.images[payload] = self.training_trigger(train.images[payload], generator)
        cover = self.cross_samples(result, round(self.cover_rate * len(train)), generator, target_class=False)
        if len(cover):
            result.dataset.images[cover] = self.training_trigger(train.images[cover], generator)
        result.cross_indices = cover
        return result
