"""CBD, Causality-inspired Backdoor Defense (Zhang, Liu, Wang, Lu and Hu, "Backdoor Defense via Deconfounded
Representation Learning", CVPR 2023, arXiv 2303.06818). No clean data.

The backdoor is a confounder that the network learns first. CBD trains two models:
  1. f_B, the backdoored model, on purpose: plain cross-entropy on the poisoned set for `backdoor_epochs`
     epochs at a constant lr (early stopping: it catches the backdoor, little of the task);
  2. f_C, the clean model, from a fresh initialisation with the run's recipe, each sample's cross-entropy
     weighted by w = CE_B / (CE_B + CE_C) (f_B's loss over both models' losses on the same augmented image,
     f_C's detached), the weights rescaled to sum to the batch size: the samples f_B already fits (the
     poisons) get w near 0, so f_C learns the task and not the trigger.
Values from the official code (zaixizhang/CBD, train.py and config.py): f_B 5 epochs at lr 0.1, constant;
the weight with 1e-8 in the denominator and rescaled to the batch size. The paper adds a term that
minimises the mutual information between f_B's and f_C's penultimate features; the official code runs
without it by default (disentangle 0), and so does this one. f_C trains with the run's recipe and epochs
(the official code: 100 epochs at batch 64, lr steps at 20 and 70) and f_B with the run's augmentation and
batch size; both from their own seeds.
The report gives how well the final weights separate the poisons (AUROC of 1 - w, the weights' means on
poisons and on the rest) on the un-augmented training set: ground truth for the report only.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.options import component, option
from eigenguard.training.evaluate import per_sample_loss
from eigenguard.training.loop import LossFn


def cbd_weights(loss_backdoored: torch.Tensor, loss_clean: torch.Tensor) -> torch.Tensor:
    """w = CE_B / (CE_B + CE_C + 1e-8), rescaled so the weights sum to their count (no gradient)."""
    w = loss_backdoored / (loss_backdoored + loss_clean.detach() + 1e-8)
    return (w * len(w) / w.sum().clamp(min=1e-12)).detach()


def weighted_loss(backdoored: nn.Module) -> LossFn:
    """f_C's loss: each sample's cross-entropy weighted by `cbd_weights` with f_B's on the same inputs."""

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            loss_b = F.cross_entropy(backdoored(inputs).float(), labels, reduction="none")
        loss_c = F.cross_entropy(logits.float(), labels, reduction="none")
        return (cbd_weights(loss_b, loss_c) * loss_c).mean()

    return loss_fn


@component
class CBD(Defense):
    name = "cbd"

    backdoor_epochs: int = option(5, "epochs of the deliberately backdoored model f_B", ">= 1")
    backdoor_lr: float = option(0.1, "its constant SGD lr", "> 0")

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        t, train = ctx.trainer, ctx.train_set
        backdoored = t.new_model(seed_offset=50)
        t.fit(
            backdoored, train, epochs=self.backdoor_epochs, phase="backdoor",
            lr=self.backdoor_lr, schedule="constant", warmup_epochs=0.0,
        )  # fmt: skip
        backdoored.eval()
        for p in backdoored.parameters():
            p.requires_grad_(False)
        model = t.new_model()
        t.fit(model, train, epochs=ctx.config.epochs, loss_fn=weighted_loss(backdoored))
        loss_b = per_sample_loss(backdoored, train, t.normalize, t.config.eval_batch_size, t.amp)
        loss_c = per_sample_loss(model, train, t.normalize, t.config.eval_batch_size, t.amp)
        w = cbd_weights(loss_b, loss_c)
        poisoned = ctx.poisoned_mask(w.device)
        report = {
            "weight_auroc": ctx.auroc(-w),
            "weight_mean_poisoned": round(w[poisoned].mean().item(), 4) if poisoned.any() else None,
            "weight_mean_clean": round(w[~poisoned].mean().item(), 4),
        }
        return model, report
