"""The common interface of every defense: what it consumes, what it returns.

A defense receives a `DefenseContext`: the poisoned training set exactly as the victim got it, the
defender's clean images (drawn from the held-back 10% split, `clean_samples`, 500 as in the paper), the
run's `Trainer` (fresh models, the config's training recipe, evaluation, the log) and a provider of the
backdoored no-defense model of the same configuration (the pipeline trains it once, caches and reuses it).
It returns the model to evaluate and a report (numbers that say how it went, e.g. how many of the samples
it removed were really poisoned).

`poison_indices` is the ground truth. Defenses may use it for their report only, never for a decision.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.errors import EigenguardError
from eigenguard.options import Configurable, component, options_of
from eigenguard.training.trainer import Trainer


@dataclass
class DefenseContext:
    config: TrainConfig
    trainer: Trainer
    train_set: ImageDataset
    clean_pool: ImageDataset
    poison_indices: torch.Tensor  # ground truth, into train_set: reports only
    backdoored: Callable[[], nn.Module]  # the no-defense model of this config (needs_backdoored), cached
    # the training images the defense set aside (indices into train_set) and what it did with them: the run
    # directory lists them (set_aside.csv), so a user sees which of their images were judged poisoned
    set_aside_indices: torch.Tensor | None = None
    set_aside_how: str = ""

    def set_aside(self, indices: torch.Tensor, how: str) -> dict[str, float | int]:
        """Record the training images the defense sets aside (`how`: what it does with them) for the run
        directory; returns their precision and recall (`precision_recall`) for the report."""
        self.set_aside_indices, self.set_aside_how = indices.cpu().unique(), how
        return self.precision_recall(indices)

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

    def poisoned_mask(self, device: torch.device) -> torch.Tensor:
        """One bool per training sample, True for the poisoned ones (for reports and their bookkeeping)."""
        mask = torch.zeros(len(self.train_set), dtype=torch.bool, device=device)
        mask[self.poison_indices.to(device)] = True
        return mask

    def auroc(self, scores: torch.Tensor) -> float | None:
        """How well per-training-sample `scores` (higher: more suspicious) rank the poisons above the rest:
        the chance a random poison outscores a random clean sample, ties counted half (for reports)."""
        return auroc(scores, self.poison_indices)


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float | None:
    """Area under the ROC curve of `scores` for the samples at indices `positives` against all others, from
    the Mann-Whitney rank sum with average ranks for ties; None when either side is empty."""
    scores = scores.detach().double().cpu()
    is_pos = torch.zeros(len(scores), dtype=torch.bool)
    is_pos[positives.cpu()] = True
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based rank of each distinct value, ties averaged
    rank_sum = average_rank[inverse][is_pos].sum().item()
    return round((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), 4)


@component
class Defense(Configurable):
    """Base class. Subclasses set `name`, declare their options (options.py) and what they need, and
    implement `run`.

    Options are set in a config as `defense: {name: ft, epochs: 5}`, on the command line as
    `--set defense.epochs=5`.

    What a defense needs, declared so the pipeline provides it and the harness orders grid cells by it:
    - `needs_clean_pool`: the defender's clean images (`clean_samples` of them, or the run is refused);
    - `needs_backdoored`: the no-defense model of the same setting (FT, ANP, FP and NAD repair it, Spectral
      Signatures reads its features); a grid runs that no-defense cell first, so the cache serves it;
    - `final_evaluation`: the pipeline evaluates the returned model once more, because the defense changed
      it after (or without) the evaluation at the end of its last fit (pruning, masks) or repaired it.
    """

    role: ClassVar[str] = "defense"
    name: ClassVar[str] = "defense"
    needs_clean_pool: ClassVar[bool] = False  # set per instance where an option decides it
    needs_backdoored: ClassVar[bool] = False
    final_evaluation: ClassVar[bool] = False

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        raise NotImplementedError

    def check(self, config: TrainConfig, insertion_points: tuple[str, ...]) -> None:
        """Refuse, before anything runs, a setting this run cannot take (an insertion point its model lacks, a
        k beyond the guard's matrix)."""

    def rebuild(self, model: nn.Module) -> None:
        """Give a fresh model the structure this defense adds (a module at an insertion point), so a saved
        state dict loads into it. Most defenses only change weights: nothing to do."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **options_of(self)}


def check_insertion_point(at: str, insertion_points: tuple[str, ...], model_name: str) -> None:
    if at not in insertion_points:
        raise EigenguardError(
            f"at '{at}' is not an insertion point of {model_name}; allowed: {', '.join(insertion_points)}"
        )
