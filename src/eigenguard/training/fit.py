"""A training recipe and `Fit`, the one object that trains a model with it, an epoch at a time.

Every model eigenguard trains goes through `Fit`: the victim's model (through the run's `Trainer`, which
adds evaluation, the log and checkpoints), a defense's retraining or fine-tuning, and CLB's surrogate. A
recipe is SGD with momentum and weight decay, a per-step lr schedule with linear warm-up, and device-side
augmentation (random crop with padding, optional flip); `loop.train_one_epoch` is one pass of it.
"""

from dataclasses import dataclass

import torch
from torch import nn

from eigenguard.data.transforms import Normalize
from eigenguard.training.checkpoint import Checkpoints, Saved
from eigenguard.training.loop import BatchFn, LossFn, StepCallback, train_one_epoch
from eigenguard.training.schedule import lr_multiplier

CROP_PAD = 4  # random-crop padding of every recipe that augments (the usual CIFAR value)


@dataclass(frozen=True)
class Recipe:
    """How to train: optimiser, schedule, batches and augmentation. Defaults are the usual CIFAR values."""

    epochs: int
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | multistep | constant (schedule.py)
    warmup_epochs: float = 0.0
    crop_pad: int = CROP_PAD  # 0: no crop
    flip: bool = True

    def steps_per_epoch(self, samples: int) -> int:
        return max(samples // self.batch_size, 1)


class Fit:
    """Training `model` in place on uint8 `images` (on the training device) with `recipe`: `epoch()` trains
    the next one; `done` counts them. `generator` (on the data's device) draws batch order and augmentation.
    `loss_fn`, `sample_losses` and `make_batch` are loop.train_one_epoch's."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        recipe: Recipe,
        *,
        normalize: Normalize,
        generator: torch.Generator,
        amp: bool = False,
        loss_fn: LossFn | None = None,
        sample_losses: torch.Tensor | None = None,
        make_batch: BatchFn | None = None,
    ) -> None:
        self.model, self.images, self.labels, self.recipe = model, images, labels, recipe
        self.normalize, self.generator, self.amp = normalize, generator, amp
        self.loss_fn, self.sample_losses, self.make_batch = loss_fn, sample_losses, make_batch
        steps = recipe.steps_per_epoch(len(images))
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lr_multiplier(recipe.schedule, steps * recipe.epochs, round(recipe.warmup_epochs * steps)),
        )
        self.done = 0

    @property
    def finished(self) -> bool:
        return self.done >= self.recipe.epochs

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def epoch(self, extra_inputs: torch.Tensor | None = None, on_step: StepCallback | None = None) -> dict[str, float]:
        """Train the next epoch (`extra_inputs`: normalised rows appended to every batch, EigenGuard's
        anchors); returns its mean loss and accuracy on the augmented batches."""
        stats = train_one_epoch(
            self.model,
            self.optimizer,
            self.scheduler,
            self.images,
            self.labels,
            batch_size=self.recipe.batch_size,
            normalize=self.normalize,
            generator=self.generator,
            crop_pad=self.recipe.crop_pad,
            flip=self.recipe.flip,
            amp=self.amp,
            on_step=on_step,
            extra_inputs=extra_inputs,
            loss_fn=self.loss_fn,
            sample_losses=self.sample_losses,
            make_batch=self.make_batch,
        )
        self.done += 1
        return stats

    def save(
        self,
        checkpoints: Checkpoints,
        phase: str,
        *,
        model: nn.Module,
        generators: dict[str, torch.Generator],
        record: dict | None = None,
    ) -> None:
        """Checkpoint after the epochs done: `model`'s weights (the module `self.model` wraps, if compiled),
        the optimizer, the schedule's position, `generators`, the sample-loss buffer and `record`."""
        checkpoints.save(
            phase,
            self.done,
            self.recipe.epochs,
            modules={"model": model},
            optimizers={"sgd": self.optimizer},
            generators={"batches": self.generator, **generators},
            tensors=self._buffers(),
            record={**(record or {}), "scheduler": self.scheduler.state_dict()},
        )

    def _buffers(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint keeps beside the weights: the per-sample loss buffer, if any."""
        return {} if self.sample_losses is None else {"sample_losses": self.sample_losses}

    def resume(self, saved: Saved, *, model: nn.Module, generators: dict[str, torch.Generator]) -> None:
        """Continue from what `save` wrote (the same model, generators and recipe)."""
        saved.restore(
            {"model": model},
            {"sgd": self.optimizer},
            {"batches": self.generator, **generators},
            self._buffers(),
        )
        self.scheduler.load_state_dict(saved.record["scheduler"])
        self.done = saved.step
