"""A training recipe and `fit`, the one function that trains a model with it.

Every model eigenguard trains goes through `fit`: the victim's model (through the run's `Trainer`, which
adds evaluation and the log), a defense's retraining or fine-tuning, and CLB's surrogate. A recipe is SGD
with momentum and weight decay, a per-step lr schedule with linear warm-up, and device-side augmentation
(random crop with padding, optional flip); `loop.train_one_epoch` is one pass of it.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from eigenguard.data.transforms import Normalize
from eigenguard.training.loop import BatchFn, EpochPosition, LossFn, StepCallback, train_one_epoch
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


EpochStart = Callable[[int], torch.Tensor | None]  # epoch (1-based) -> extra normalised rows for every batch
Scheduler = torch.optim.lr_scheduler.LRScheduler
EpochEnd = Callable[[int, dict[str, float], torch.optim.Optimizer, Scheduler], None]  # epoch, stats, optimizer, lr


PositionCallback = Callable[[int, EpochPosition, torch.optim.Optimizer, Scheduler], None]  # within an epoch


@dataclass(frozen=True)
class Resume:
    """Where an interrupted fit goes on: after `epoch` complete epochs (and `position` steps into the next
    one, if it was checkpointed within it), with the optimizer's and schedule's saved states."""

    epoch: int
    optimizer: dict
    scheduler: dict
    position: EpochPosition | None = None


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    *,
    normalize: Normalize,
    generator: torch.Generator,
    amp: bool = False,
    loss_fn: LossFn | None = None,
    on_epoch_start: EpochStart | None = None,
    on_epoch_end: EpochEnd | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    resume: Resume | None = None,
    on_position: PositionCallback | None = None,
    position_every: int = 0,
    sample_losses: torch.Tensor | None = None,
    make_batch: BatchFn | None = None,
) -> dict[str, float]:
    """Train `model` in place on uint8 `images` (on the training device) with `recipe`; returns the last
    epoch's stats (train_loss, train_acc on the augmented batches).

    `generator` (on the data's device) draws batch order and augmentation. `on_epoch_start` may hand extra
    rows to append to every batch of that epoch (EigenGuard's anchors); `on_step(epoch, step, loss)`
    reports progress; `on_epoch_end(epoch, stats, optimizer, scheduler)` sees the state a checkpoint saves.
    `resume`: continue after `resume.epoch` (the model, the generator and the caller's own state already
    restored; the optimizer and the schedule are restored here). `on_position(epoch, position, optimizer,
    scheduler)` is called every `position_every` steps within an epoch (a checkpoint's chance).
    `sample_losses`: a buffer every epoch fills with each sample's training loss (loop.train_one_epoch).
    `make_batch`: builds a batch from its indices instead of the recipe's augmentation (loop.train_one_epoch).
    """
    steps_per_epoch = recipe.steps_per_epoch(len(images))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_multiplier(recipe.schedule, steps_per_epoch * recipe.epochs, round(recipe.warmup_epochs * steps_per_epoch)),
    )
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
    stats: dict[str, float] = {}
    for epoch in range(1 if resume is None else resume.epoch + 1, recipe.epochs + 1):
        extra = on_epoch_start(epoch) if on_epoch_start else None
        step_callback: StepCallback | None = None
        if on_step is not None:

            def step_callback(step: int, loss: float, epoch: int = epoch) -> None:
                on_step(epoch, step, loss)

        position = resume.position if resume is not None and epoch == resume.epoch + 1 else None
        position_callback = None
        if on_position is not None:

            def position_callback(at: EpochPosition, epoch: int = epoch) -> None:
                on_position(epoch, at, optimizer, scheduler)

        stats = train_one_epoch(
            model,
            optimizer,
            scheduler,
            images,
            labels,
            batch_size=recipe.batch_size,
            normalize=normalize,
            generator=generator,
            crop_pad=recipe.crop_pad,
            flip=recipe.flip,
            amp=amp,
            on_step=step_callback,
            extra_inputs=extra,
            loss_fn=loss_fn,
            position=position,
            on_position=position_callback,
            position_every=position_every,
            sample_losses=sample_losses,
            make_batch=make_batch,
        )
        if on_epoch_end:
            on_epoch_end(epoch, stats, optimizer, scheduler)
    return stats
