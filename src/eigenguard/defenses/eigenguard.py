"""EigenGuard as a defense: the guard inserted into a fresh model, trained with the config's recipe.

The guard's own choices (k, momentum, history start, backward mode, precision, insertion point) are
config fields (`--k`, `--momentum`, ...); guard/module.py documents each. This module adds the paper's
"100 training samples with the lowest loss": re-chosen before every epoch from the second on (the first has
no trained model to rank by), ranked in batch mode as in training (per-sample mode would be 10x slower),
joined to every batch's decomposition un-augmented and without gradient. The guard returns only the batch
rows. The log records how many of them were poisoned (`anchors_poisoned`).
"""

from typing import Any

import torch
from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses.base import Defense, DefenseContext
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
    name = "eigenguard"

    def rebuild(self, model: nn.Module, config: TrainConfig) -> EigenGuard:
        return guard(
            model,
            at=config.guard_at,
            k=config.k,
            momentum=config.momentum,
            history_init=config.history_init,
            grad=config.guard_grad,
            precision=config.guard_precision,
        )

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        cfg = ctx.config
        model = ctx.trainer.new_model()
        g = self.rebuild(model, cfg).to(ctx.trainer.device)
        hook = LowestLossAnchors([g], ctx.train_set, cfg.lowest_loss_samples, ctx.trainer, ctx.poison_indices)
        ctx.trainer.fit(model, ctx.train_set, epochs=cfg.epochs, hook=hook)
        return model, {}
