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

from typing import Any

import torch
from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.detectors.base import top_per_class
from eigenguard.detectors.spectral import per_class_spectral_scores
from eigenguard.options import component, option
from eigenguard.training.features import features


@component
class SpectralSignatures(Defense):
    name = "ss"
    needs_backdoored = True  # its features; the model it returns is trained from scratch

    epsilon: float = option(0.1, "the assumed poisoned fraction", "(0, 1)")
    removal_factor: float = option(1.5, "removes removal_factor * epsilon of each class", "> 0")

    def flag(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Indices of the samples to remove, class by class (sorted): the `ss` detector's flagged set."""
        scores, _ = per_class_spectral_scores(features, labels, int(labels.max()) + 1)
        return top_per_class(scores, labels, self.removal_factor * self.epsilon)

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
        return model, {"removal": ctx.set_aside(removed, "dropped before the retraining")}
