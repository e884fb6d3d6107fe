"""What every attack shares: the trigger is a tensor op, poisoning is bookkeeping around it.

An attack only has to say how to stamp its trigger on a uint8 batch (`apply`). The base class turns
that into a poisoned training set (which samples, relabelled how, recorded where) and an ASR test set.
Clean-label attacks override `candidates` and `relabels`.
"""

from dataclasses import dataclass

import torch

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.errors import EigenguardError


@dataclass
class PoisonedTrainingSet:
    """The training set as the victim sees it, plus the ground truth of what was poisoned.

    `poison_indices` index into `dataset` (sorted, int64); `is_poisoned` is the same as a bool mask.
    `original_labels` are the labels before relabelling, so analyses can compare.
    """

    dataset: ImageDataset
    poison_indices: torch.Tensor
    original_labels: torch.Tensor

    @property
    def is_poisoned(self) -> torch.Tensor:
        mask = torch.zeros(len(self.dataset), dtype=torch.bool, device=self.poison_indices.device)
        mask[self.poison_indices] = True
        return mask


class Attack:
    """Base class. Subclasses set `name` and implement `apply`.

    image_shape: (C, H, W) of the images the trigger will be stamped on.
    target: the class every triggered input should be sent to (all-to-one).
    seed: seeds any randomness of the trigger itself (e.g. Blend's noise pattern).
    """

    name: str = "attack"

    def __init__(self, image_shape: tuple[int, int, int], target: int = 0, seed: int = 0) -> None:
        self.image_shape = tuple(int(s) for s in image_shape)
        self.target = int(target)
        self.seed = int(seed)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a uint8 batch (N, C, H, W); returns a new uint8 batch."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """The attack's parameters, for the run's config record."""
        return {"name": self.name, "target": self.target, "seed": self.seed}

    # -- poisoning -----------------------------------------------------------------------------

    def candidates(self, labels: torch.Tensor) -> torch.Tensor:
        """Indices eligible for poisoning. Dirty-label default: every sample not of the target class."""
        return torch.nonzero(labels != self.target).flatten()

    def relabels(self) -> bool:
        """Whether poisoned samples get the target label (dirty-label) or keep theirs (clean-label)."""
        return True

    def poison(self, train: ImageDataset, rate: float, generator: torch.Generator) -> PoisonedTrainingSet:
        """Poison round(rate * len(train)) samples drawn uniformly from `candidates`.

        The rate is a fraction of the whole training set, as in the paper. `generator` (CPU) makes the
        choice reproducible: same seed, same indices.
        """
        self._check_dataset(train)
        if not 0.0 <= rate < 1.0:
            raise EigenguardError(f"poison rate {rate} is outside the allowed range [0, 1)")
        n_poison = round(rate * len(train))
        pool = self.candidates(train.labels.cpu())
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
            images[chosen] = self.apply(images[chosen])
            if self.relabels():
                labels[chosen] = self.target
        poisoned = ImageDataset(images, labels, train.classes, train.mean, train.std)
        return PoisonedTrainingSet(poisoned, chosen, train.labels.clone())

    def asr_test_set(self, test: ImageDataset) -> ImageDataset:
        """Every test image of a non-target class, triggered, labelled with the target.

        Accuracy on this set is the attack success rate (ASR).
        """
        self._check_dataset(test)
        keep = torch.nonzero(test.labels != self.target).flatten()
        images = self.apply(test.images[keep])
        labels = torch.full_like(test.labels[keep], self.target)
        return ImageDataset(images, labels, test.classes, test.mean, test.std)

    def _check_dataset(self, data: ImageDataset) -> None:
        if data.image_shape != self.image_shape:
            raise EigenguardError(
                f"attack '{self.name}' was built for images of shape {self.image_shape}, got {data.image_shape}"
            )
        if not 0 <= self.target < data.num_classes:
            raise EigenguardError(f"target class {self.target} is out of range; allowed: 0..{data.num_classes - 1}")
