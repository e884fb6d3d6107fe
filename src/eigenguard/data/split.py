"""The defender's split: a seeded permutation cuts the training set into 90% train / 10% defense pool.

The defense pool never reaches the victim's training loop; defenses that need clean data (fine-tuning,
ANP) draw a small subset of it, e.g. 500 images, as in the paper (Section 4.1).
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DefenseSplit:
    train: torch.Tensor  # int64 indices into the original training set, sorted
    defense: torch.Tensor  # int64 indices into the original training set, sorted


def defense_split(
    n: int, defense_fraction: float = 0.1, seed: int = 0, train_subset: int | None = None
) -> DefenseSplit:
    """Split range(n) deterministically; `train_subset` keeps only that many of the training indices.

    The subset is a prefix of the same seeded permutation, so a smaller subset is contained in a larger
    one and the defense pool does not depend on the subset size.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_defense = round(defense_fraction * n)
    defense, train = order[:n_defense], order[n_defense:]
    if train_subset is not None:
        train = train[:train_subset]
    return DefenseSplit(train=train.sort().values, defense=defense.sort().values)
