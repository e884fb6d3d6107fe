"""ABL's isolation (Li et al., "Anti-Backdoor Learning", NeurIPS 2021) as a detector: backdoor samples are
learned faster than clean ones, so under local gradient ascent their loss falls far below the rest.

A fresh model trains on the data with the LGA loss, sign(loss - gamma) x loss on the batch mean (gamma
0.5), at the config's constant peak lr, for `isolation_epochs` (default 20% of the config's epochs: ABL's
20 of 100); each image's cross-entropy is then read in eval mode. Score: minus that loss (the lowest loss
first); flagged: the `isolation_rate` lowest (10%, matching the paper's poison rate; ABL's own default is
1%). The target evidence is where the flagged images sit: the scan compares each class's share of them
with its share of the data. The ABL defense runs this isolation as its first phase. No clean data.
"""

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.detectors.base import Detection, DetectionContext, Detector
from eigenguard.options import component, option
from eigenguard.training.evaluate import per_sample_loss
from eigenguard.training.trainer import Trainer


def lga_loss(gamma: float):
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, _inputs: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels)
        return torch.sign(loss - gamma) * loss

    return loss_fn


def isolation_length(given: int | None, total: int) -> int:
    """ABL's isolation length: `given`, else 20% of the run's epochs (at least one)."""
    return given if given is not None else max(1, round(0.2 * total))


def train_isolation(trainer: Trainer, data: ImageDataset, epochs: int, gamma: float) -> nn.Module:
    """A fresh model trained on `data` under local gradient ascent (the phase "isolate" of the run)."""
    model = trainer.new_model()
    trainer.fit(model, data, epochs=epochs, phase="isolate", schedule="constant", loss_fn=lga_loss(gamma))
    return model


def lowest_loss(
    model: nn.Module, trainer: Trainer, data: ImageDataset, rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's loss under `model` (eval mode) and the indices of the `rate` lowest (sorted)."""
    losses = per_sample_loss(
        trainer.forward_of(model), data, trainer.normalize, trainer.config.eval_batch_size, trainer.amp
    )
    count = max(1, round(rate * len(losses)))
    return losses, losses.topk(count, largest=False).indices.sort().values


@component
class LossIsolation(Detector):
    name = "abl"
    needs_trained = False  # it trains its own isolation model

    isolation_rate: float = option(0.1, "fraction of the training set flagged (lowest loss)", "(0, 1)")
    gamma: float = option(0.5, "the loss floor of local gradient ascent", ">= 0")
    isolation_epochs: int | None = option(None, "epochs of isolation (null: 20% of the config's)", ">= 1")

    def detect(self, ctx: DetectionContext) -> Detection:
        epochs = isolation_length(self.isolation_epochs, ctx.config.epochs)
        model = train_isolation(ctx.trainer, ctx.train_set, epochs, self.gamma)
        losses, flagged = lowest_loss(model, ctx.trainer, ctx.train_set, self.isolation_rate)
        return Detection(-losses.double().cpu(), flagged.cpu(), {"isolation_epochs": epochs})
