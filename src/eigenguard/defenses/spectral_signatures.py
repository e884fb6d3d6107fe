"""Spectral Signatures (Tran, Li & Madry, NeurIPS 2018): find poisons by SVD of their features, remove, retrain.

The closest relative of EigenGuard: both read the backdoor off the top singular direction of the
features. SS does it once, offline: for each class, centre that class's feature vectors, take the top
right singular vector v, score every sample by its squared projection <r_i - mean, v>^2, and remove the
`removal_factor` x epsilon x n_c highest-scoring samples of the class (Tran et al.: 1.5 epsilon, epsilon
the assumed poisoned fraction; default 0.1, the paper's poison rate, i.e. the 85th-percentile cut of
Tran et al.'s code and BackdoorBench). Then a fresh model is trained on what is left, with the config's
recipe. The defender does not know the target class, so every class is cleaned.

Features: the backdoored no-defense model of this configuration (from the cache), in eval mode, at the
output of its last stage (before the classifier's pooling), flattened. Tran et al. used the input of the
last residual unit of a 3-stage ResNet; BackdoorBench uses the last stage's output, as here.
The report gives the removal precision and recall against the true poisons.
"""

import math
from typing import Any

import torch
from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.options import component, option
from eigenguard.training.features import features


def spectral_scores(features: torch.Tensor) -> torch.Tensor:
    """Squared projection of each centred row on the rows' top right singular vector (float64)."""
    centred = features.double() - features.double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]) ** 2


@component
class SpectralSignatures(Defense):
    name = "ss"
    needs_backdoored = True  # its features; the model it returns is trained from scratch

    epsilon: float = option(0.1, "the assumed poisoned fraction", "(0, 1)")
    removal_factor: float = option(1.5, "removes removal_factor * epsilon of each class", "> 0")

    def flag(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Indices of the samples to remove, class by class (sorted)."""
        removed = []
        for c in labels.unique().tolist():
            members = torch.nonzero(labels == c).flatten()
            count = min(len(members), math.ceil(self.removal_factor * self.epsilon * len(members) - 1e-9))
            if count == 0 or len(members) < 2:
                continue
            scores = spectral_scores(features[members])
            removed.append(members[scores.topk(count).indices])
        return torch.cat(removed).sort().values if removed else torch.empty(0, dtype=torch.int64)

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        t = ctx.trainer
        backdoored = ctx.backdoored()
        point = backdoored.insertion_points[-1]
        rows = features(
            backdoored, ctx.train_set.images, point, t.normalize, batch_size=t.config.eval_batch_size, amp=t.amp
        )
        removed = self.flag(rows, ctx.train_set.labels)
        keep = torch.ones(len(ctx.train_set), dtype=torch.bool, device=removed.device)
        keep[removed] = False
        del backdoored, rows
        model = t.new_model()
        t.fit(model, ctx.train_set.subset(torch.nonzero(keep).flatten()), epochs=ctx.config.epochs, phase="retrain")
        return model, {"removal": ctx.precision_recall(removed)}
