"""EigenGuard as a defense: the guard inserted into a fresh model, trained with the config's recipe.

The guard's own choices (insertion point, k, momentum, history start, backward mode, precision) are this
defense's options (`--set defense.k=40`); guard/module.py documents each. This module adds the paper's
"100 training samples with the lowest loss": re-chosen before every epoch from the second on (the first has
no trained model to rank by), ranked in batch mode as in training (per-sample mode would be 10x slower),
joined to every batch's decomposition un-augmented and without gradient. The guard returns only the batch
rows. The log records how many of them were poisoned (`anchors_poisoned`).
"""

from typing import Any

import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses.base import Defense, DefenseContext, check_insertion_point
from eigenguard.errors import EigenguardError
from eigenguard.guard import EigenGuard, guard, inference_mode
from eigenguard.training.evaluate import per_sample_loss
from eigenguard.training.trainer import Trainer


class LowestLossAnchors:
    """The epoch hook that picks and attaches the lowest-loss samples."""

    def __init__(
        self, guards: list[EigenGuard], data: ImageDataset, count: int, trainer: Trainer, poisoned: torch.Tensor
    ):
        self.guards, self.data, self.count, self.trainer, self.poisoned = guards, data, count, trainer, poisoned

    def before_epoch(self, epoch: int, model: nn.Module) -> tuple[torch.Tensor | None, dict[str, Any]]:
        if not self.count or epoch == 1:
            return None, {"anchors_poisoned": ""}
        t = self.trainer
        with inference_mode(self.guards, "batch"):
            losses = per_sample_loss(model, self.data, t.normalize, t.config.batch_size, t.amp)
        chosen = losses.topk(min(self.count, len(losses)), largest=False).indices
        for g in self.guards:
            g.anchor_rows = len(chosen)
        poisoned = int(torch.isin(chosen.cpu(), self.poisoned).sum())  # for the log only
        return t.normalize(self.data.images[chosen]), {"anchors_poisoned": poisoned}

    def after_epoch(self, epoch: int) -> None:
        for g in self.guards:
            g.anchor_rows = 0


class EigenGuardDefense(Defense):
    """Options (`defense: {name: eigenguard, k: 20, ...}`), the paper's values as defaults:

    at: insertion point (stage1: after the first residual stage, as the paper);
    k: top singular directions flattened to one scale (20); momentum: of the history buffer His (0.7);
    history_init: His before step one, first | zeros; grad: backward mode, constant | full;
    precision: dtype of the Gram matrix and its eigh, float32 | float64;
    lowest_loss_samples: training samples with the lowest loss joined to every decomposition (100).
    guard/module.py documents each choice.
    """

    name = "eigenguard"

    def __init__(
        self,
        at: str = "stage1",
        k: int = 20,
        momentum: float = 0.7,
        history_init: str = "first",
        grad: str = "constant",
        precision: str = "float32",
        lowest_loss_samples: int = 100,
    ) -> None:
        if not isinstance(lowest_loss_samples, int) or lowest_loss_samples < 0:
            raise EigenguardError(f"lowest_loss_samples {lowest_loss_samples!r} must be an integer >= 0")
        self.at, self.k, self.momentum = at, k, momentum
        self.history_init, self.grad, self.precision = history_init, grad, precision
        self.lowest_loss_samples = lowest_loss_samples
        # the module's own checks of k, momentum, history_init, grad and precision
        EigenGuard(k=k, momentum=momentum, history_init=history_init, grad=grad, precision=precision)

    def check(self, insertion_points: tuple[str, ...], model_name: str) -> None:
        check_insertion_point(self.at, insertion_points, model_name)

    def rebuild(self, model: nn.Module) -> EigenGuard:
        options = {"history_init": self.history_init, "grad": self.grad, "precision": self.precision}
        return guard(model, at=self.at, k=self.k, momentum=self.momentum, **options)

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.trainer.new_model()
        g = self.rebuild(model).to(ctx.trainer.device)
        hook = LowestLossAnchors([g], ctx.train_set, self.lowest_loss_samples, ctx.trainer, ctx.poison_indices)
        ctx.trainer.fit(model, ctx.train_set, epochs=ctx.config.epochs, hook=hook)
        return model, {}
