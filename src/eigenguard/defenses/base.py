"""The common interface of every defense: what it consumes, what it returns.

A defense receives a `DefenseContext`: the poisoned training set exactly as the victim got it, the
defender's clean images (drawn from the held-back 10% split, `--clean-samples`, 500 as in the paper), the
run's `Trainer` (fresh models, the config's training recipe, evaluation, the log) and, for defenses that
repair a trained model, the backdoored no-defense model of the same configuration (trained once, cached,
reused). It returns the model to evaluate and a report (numbers that say how it went, e.g. how many of the
samples it removed were really poisoned).

`poison_indices` is the ground truth. Defenses may use it for their report only, never for a decision.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.training.trainer import Trainer


@dataclass
class DefenseContext:
    config: TrainConfig
    trainer: Trainer
    train_set: ImageDataset
    clean_pool: ImageDataset
    poison_indices: torch.Tensor  # ground truth, into train_set: reports only
    backdoored: Callable[[], nn.Module]  # the no-defense model of this config, from the cache or trained now

    def precision_recall(self, flagged: torch.Tensor) -> dict[str, float | int]:
        """How well a set of flagged training indices matches the poisoned ones (for reports)."""
        flagged_set = set(flagged.cpu().tolist())
        poisoned = set(self.poison_indices.cpu().tolist())
        hits = len(flagged_set & poisoned)
        return {
            "flagged": len(flagged_set),
            "flagged_poisoned": hits,
            "precision": round(hits / len(flagged_set), 4) if flagged_set else 0.0,
            "recall": round(hits / len(poisoned), 4) if poisoned else 0.0,
        }


class Defense:
    """Base class. Subclasses set `name`, say whether they start from the backdoored model, and implement `run`.

    Options are keyword arguments of `__init__` with documented defaults (`--defense-option KEY=VALUE`).
    """

    name: str = "defense"
    post_training: bool = False  # True: repairs the backdoored model (FT, ANP, FP, NAD)

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        raise NotImplementedError

    def rebuild(self, model: nn.Module, config: TrainConfig) -> None:
        """Give a fresh model the structure this defense adds (a module at an insertion point), so a saved
        state dict loads into it. Most defenses only change weights: nothing to do."""

    def describe(self) -> dict[str, Any]:
        options = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"name": self.name, "post_training": self.post_training, **options}
