"""Training a model with the guard in it: the guard inserted into a fresh model, the anchors chosen before
every epoch, the config's recipe. The EigenGuard defense is this with its options; the sieve (detector and
defense) trains one the same way to read its refusals.

The anchors are the paper's "100 training samples with the lowest loss", re-chosen before every epoch from
the second on (the first has no trained model to rank by), joined to every batch's decomposition
un-augmented and without gradient. The guard returns only the batch rows. The log records how many of them
were poisoned (`anchors_poisoned`) where the caller knows the truth.

How the anchors are picked (`anchors`), the paper's rule first; docs/results/eigenguard-study.md measures
them (the paper's rule picks poisons: a backdoor is learned first, so its samples have the lowest loss):
  lowest-loss            the `anchor_count` training samples of lowest loss (Section 4.1 of the paper);
  lowest-loss-per-class  the lowest-loss samples of each (possibly poisoned) label, anchor_count / classes
                         each: a backdoor's samples share one target label, so at most one class's share
                         of the anchors can be poisons;
  median-loss            the samples ranked around the median loss, away from both the fast-learned
                         poisons (lowest) and the hard or mislabelled samples (highest);
  random                 uniformly drawn training samples, re-drawn every epoch (no ranking pass);
  clean                  drawn from the defender's clean images (the 500 FT and ANP get): this variant
                         uses clean data, which the paper's EigenGuard does not;
  none                   no anchors.

Where the ranked rules get the losses from (`ranking`):
  pass      a forward pass over the whole training set before the epoch, un-augmented, the guard in its
            batch inference mode (as in training): the paper's "lowest loss" read literally, at the price of
            one extra forward pass per epoch (about half a plain epoch's time at the quick profile);
  training  the loss each sample had in the previous epoch's training step (augmented, in training mode, at
            the weights of that step): no extra pass; samples of the dropped last batch are not ranked.
            docs/results/performance.md measures the time saved and whether ACC and ASR move.

How the anchors' features are computed each step (`anchor_features`):
  joint     the anchors are appended to the batch and run through the layers before the guard with it,
            in training mode: they take part in those layers' BatchNorm statistics, and the backward pass
            runs over their rows too (their gradient is zero: the guard detaches them);
  detached  they run alone through the layers before the guard, without gradient, BatchNorm on its running
            statistics (as at inference) and not updating them: the batch's statistics are its own and the
            backward pass never sees the anchors. Cheaper; the anchors' features are what the model at
            that step computes for them at inference.
"""

from collections.abc import Callable
from dataclasses import fields
from typing import Any, Literal

import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.guard import EigenGuard, GuardOptions, guard, inference_mode
from eigenguard.guard.module import Precision
from eigenguard.guard.spectral_filter import Grad, Spectrum
from eigenguard.models import Backbone
from eigenguard.options import Configurable, component, option, option_like
from eigenguard.training.evaluate import per_sample_loss
from eigenguard.training.trainer import Trainer

Anchor = Literal["lowest-loss", "lowest-loss-per-class", "median-loss", "random", "clean", "none"]
RANKED = ("lowest-loss", "lowest-loss-per-class", "median-loss")


def detached_features(model: Backbone, point: str, images: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A function that computes `images`' features at the input of the module at `point` with the model as it
    is when called: without gradient, BatchNorm on its running statistics (the layers' mode restored)."""
    layers = model.stages_through(point)

    def features() -> torch.Tensor:
        modes = [m.training for m in layers]
        try:
            for m in layers:
                m.eval()
            with torch.no_grad():
                return model.features(images, point, through_point=False)
        finally:
            for m, mode in zip(layers, modes, strict=True):
                m.train(mode)

    return features


def pick_by_loss(losses: torch.Tensor, labels: torch.Tensor, count: int, rule: str) -> torch.Tensor:
    """Indices of `count` samples chosen from their losses by `rule` (one of RANKED)."""
    count = min(count, len(losses))
    if rule == "lowest-loss":
        return losses.topk(count, largest=False).indices
    if rule == "median-loss":
        order = losses.argsort(stable=True)
        start = max(0, min(len(losses) - count, (len(losses) - count) // 2))
        return order[start : start + count]
    if rule == "lowest-loss-per-class":
        classes = labels.unique(sorted=True)
        share, extra = divmod(count, len(classes))
        picked = []
        for i, c in enumerate(classes.tolist()):  # a loop over classes, not samples
            members = (labels == c).nonzero().squeeze(1)
            take = min(share + (i < extra), len(members))
            picked.append(members[losses[members].topk(take, largest=False).indices])
        return torch.cat(picked)
    raise ValueError(f"unknown anchor rule '{rule}'; allowed: {', '.join(RANKED)}")


class Anchors:
    """The epoch hook that picks the anchors and attaches them to every batch of the epoch."""

    def __init__(
        self,
        guards: list[EigenGuard],
        data: ImageDataset,
        clean_pool: ImageDataset | None,
        rule: str,
        count: int,
        trainer: Trainer,
        poisoned: torch.Tensor | None,  # for the log only; None: the log leaves the count empty
        ranking: str = "pass",
        detached_from: tuple[Backbone, str] | None = None,
    ):
        self.guards, self.data, self.clean_pool, self.rule, self.count = guards, data, clean_pool, rule, count
        self.trainer, self.poisoned = trainer, poisoned
        self.detached_from = detached_from  # (model, insertion point): anchor features computed apart
        self.generator = torch.Generator().manual_seed(trainer.config.seed + 11)  # random and clean draws
        self.training_losses = (  # filled by the training steps (ranking "training")
            torch.full((len(data),), float("inf"), device=data.images.device)
            if ranking == "training" and rule in RANKED
            else None
        )

    def before_epoch(self, epoch: int, model: nn.Module) -> tuple[torch.Tensor | None, dict[str, Any]]:
        if self.rule == "none" or epoch == 1:
            return None, {"anchors_poisoned": ""}
        t = self.trainer
        if self.rule == "clean":
            chosen = torch.randperm(len(self.clean_pool), generator=self.generator)[: self.count]
            assert self.clean_pool is not None, "anchors=clean needs the defender's clean images"
            images, poisoned = self.clean_pool.images[chosen.to(self.clean_pool.images.device)], 0
        else:
            if self.rule == "random":
                chosen = torch.randperm(len(self.data), generator=self.generator)[: self.count]
            elif self.training_losses is not None:  # the previous epoch's training steps ranked them
                chosen = pick_by_loss(self.training_losses, self.data.labels, self.count, self.rule).cpu()
            else:
                with inference_mode(self.guards, "batch"):
                    losses = per_sample_loss(model, self.data, t.normalize, t.config.batch_size, t.amp)
                chosen = pick_by_loss(losses, self.data.labels, self.count, self.rule).cpu()
            images = self.data.images[chosen.to(self.data.images.device)]
            poisoned = "" if self.poisoned is None else int(torch.isin(chosen, self.poisoned.cpu()).sum())
        extra = t.normalize(images)
        self._attach(extra)
        # joint anchors ride along every batch; detached ones are computed apart by the guard (_attach)
        return (extra if self.detached_from is None else None), {"anchors_poisoned": poisoned}

    def _attach(self, extra: torch.Tensor | None) -> None:
        """Hand the epoch's anchors (None: none) to the guards: as batch rows, or as a detached source."""
        joint = extra is not None and self.detached_from is None
        source = None if extra is None or self.detached_from is None else detached_features(*self.detached_from, extra)
        for g in self.guards:
            g.anchor_rows, g.anchor_source = len(extra) if joint else 0, source

    def after_epoch(self, epoch: int) -> None:
        self._attach(None)

    def generators(self) -> dict[str, torch.Generator]:
        return {"anchors": self.generator}

    def sample_losses(self) -> torch.Tensor | None:
        return self.training_losses


@component
class GuardedTraining(Configurable):
    """The options of a guarded model's training, declared once: the guard's (GuardOptions, the paper's
    values as defaults) and the anchors' (module docstring). The EigenGuard defense is one; the sieve trains
    one with the defaults."""

    at: str = option("stage1", "insertion point (after the first residual stage, as the paper)")
    k: int = option_like(GuardOptions, "k")
    momentum: float = option_like(GuardOptions, "momentum")
    history_init: Literal["first", "zeros"] = option_like(GuardOptions, "history_init")
    grad: Grad = option_like(GuardOptions, "grad")
    precision: Precision = option_like(GuardOptions, "precision")
    spectrum: Spectrum = option_like(GuardOptions, "spectrum")
    floor: float = option_like(GuardOptions, "floor")
    training: Literal["batch", "per-sample"] = option_like(GuardOptions, "training")
    anchors: Anchor = option("lowest-loss", "how the anchor samples are picked")
    anchor_count: int = option(100, "how many anchors (the paper's 100; no anchors: anchors=none)", ">= 1")
    ranking: Literal["pass", "training"] = option(
        "pass", "losses of the ranked rules: a pass before each epoch (the paper), or the previous epoch's"
    )
    anchor_features: Literal["joint", "detached"] = option(
        "joint", "the anchors' features: with the batch (the paper), or alone, without gradient"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # the module's options, passed whole (the solver is inference's, not training's)
        self.guard = GuardOptions(**{f.name: getattr(self, f.name) for f in fields(GuardOptions) if f.name != "solver"})

    def rebuild(self, model: nn.Module) -> EigenGuard:
        return guard(model, at=self.at, options=self.guard)

    def train_guarded(
        self,
        trainer: Trainer,
        data: ImageDataset,
        epochs: int,
        phase: str = "train",
        clean_pool: ImageDataset | None = None,
        poisoned: torch.Tensor | None = None,
    ) -> Backbone:
        """A fresh model with the guard in it, trained on `data` for `epochs` (`poisoned`: for the log only)."""
        model = trainer.new_model()
        g = self.rebuild(model).to(trainer.device)
        hook = Anchors(
            [g], data, clean_pool, self.anchors, self.anchor_count, trainer, poisoned, self.ranking,
            (model, self.at) if self.anchor_features == "detached" else None,
        )  # fmt: skip
        trainer.fit(model, data, epochs=epochs, phase=phase, hook=hook)
        return model
