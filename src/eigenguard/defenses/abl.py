"""ABL, Anti-Backdoor Learning (Li et al., NeurIPS 2021b).

Backdoored samples are learned faster than clean ones. ABL exploits it in three phases, on one model:
  1. isolation: train with local gradient ascent (LGA), loss' = sign(loss - gamma) * loss with gamma 0.5:
     once a batch's loss falls below gamma it is pushed back up, so clean samples hover near gamma while
     the fast-learned backdoor samples fall far below it; applied to the batch-mean loss, as the official
     code (bboylyg/ABL). Constant lr (the config's peak lr), as the official code;
  2. the `isolation_rate` lowest-loss training samples (eval mode) are isolated: 10%, the paper's choice to
     match the poison rate (ABL's own default is 1%);
  3. training continues on the remaining samples with the config's recipe, then the model unlearns the
     isolated set by gradient ascent (loss = -CE, no augmentation, lr 5e-4 as the official code).
Epoch budget (ABL: 20 isolation + 60 training epochs of 100, then 5 unlearning epochs): by default
isolation is 20% of the config's epochs, training on the rest takes the other 80%, and unlearning adds 5%
(at least one epoch each), so ABL trains as long as plain training plus the unlearning.
The report gives the isolation precision (fraction of isolated samples that were really poisoned) and recall.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.detectors.loss_isolation import isolation_length, lowest_loss, train_isolation
from eigenguard.options import component, option


def ascent_loss(logits: torch.Tensor, labels: torch.Tensor, _inputs: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(logits, labels)


@component
class ABL(Defense):
    name = "abl"

    isolation_rate: float = option(0.1, "fraction of the training set isolated as suspects (lowest loss)", "(0, 1)")
    gamma: float = option(0.5, "the loss floor of local gradient ascent", ">= 0")
    isolation_epochs: int | None = option(None, "epochs of isolation (null: 20% of the config's)", ">= 1")
    training_epochs: int | None = option(None, "epochs on the rest (null: the other 80%)", ">= 0")
    unlearning_epochs: int | None = option(None, "epochs of unlearning the isolated set (null: 5%, at least 1)", ">= 0")
    unlearning_lr: float = option(5e-4, "SGD lr of the unlearning", "> 0")

    def epochs(self, total: int) -> tuple[int, int, int]:
        iso = isolation_length(self.isolation_epochs, total)
        rest = self.training_epochs if self.training_epochs is not None else max(1, total - iso)
        unlearn = self.unlearning_epochs if self.unlearning_epochs is not None else max(1, round(0.05 * total))
        return iso, rest, unlearn

    def isolate(self, model: nn.Module, ctx: DefenseContext) -> torch.Tensor:
        """Indices (into the training set) of the isolation_rate lowest-loss samples under `model`."""
        return lowest_loss(model, ctx.trainer, ctx.train_set, self.isolation_rate)[1]

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        t = ctx.trainer
        iso_epochs, rest_epochs, unlearn_epochs = self.epochs(ctx.config.epochs)
        model = train_isolation(t, ctx.train_set, iso_epochs, self.gamma)  # the `abl` detector's isolation
        isolated = self.isolate(model, ctx)
        keep = torch.ones(len(ctx.train_set), dtype=torch.bool, device=isolated.device)
        keep[isolated] = False
        t.fit(model, ctx.train_set.subset(torch.nonzero(keep).flatten()), epochs=rest_epochs, phase="train-rest")
        t.fit(
            model,
            ctx.train_set.subset(isolated),
            epochs=unlearn_epochs,
            phase="unlearn",
            lr=self.unlearning_lr,
            schedule="constant",
            warmup_epochs=0.0,
            augment=False,
            loss_fn=ascent_loss,
        )
        report = {
            "isolation": ctx.set_aside(isolated, "isolated and unlearned"),
            "epochs": [iso_epochs, rest_epochs, unlearn_epochs],
        }
        return model, report
