"""ASD, Adaptively Splitting poisoned Dataset (Gao et al., CVPR 2023): train from scratch on the poisoned
set with semi-supervised learning, keeping labels only for a clean pool that is re-chosen every epoch.

Every epoch the training set is split into a clean pool D_C (labels kept) and a polluted pool D_P (labels
dropped), and the model trains one epoch of MixMatch on them. The split sharpens over three stages (the
official 0-59 / 60-89 / 90-119 of 120 epochs, kept as fractions 1/2, 1/4, 1/4 of `epochs`):
1. class-aware: per given label, the samples with the lowest symmetric cross-entropy (SCE: 0.1 CE +
   1 RCE, RCE = -log(1e-4) (1 - p_y)), their number growing in 11 equal steps to 110 per class for
   CIFAR-10's 5,000 per class (here to the same 2.2% of the mean class size), plus the seed pool;
2. class-agnostic: the `clean_fraction` (50%) of all samples with the lowest SCE;
3. meta-split: a copy of the model (the "virtual model") trains one epoch on the whole poisoned set with
   CE, Adam lr `meta_lr` 0.015, only its last two stages and head (ResNet's layer3, layer4, fc); D_C is
   the 50% whose SCE fell least (poisons are learned fast: their loss falls most); the copy is dropped.
MixMatch (Berthelot et al. 2019) as the official code: per iteration 64 labelled and 64 unlabelled images
(random crop and flip), the unlabelled ones' labels guessed as the mean softmax of two augmentations,
sharpened at T = 0.5; MixUp with lambda ~ Beta(0.75, 0.75), lambda = max(lambda, 1 - lambda), one
permutation over [labelled; unlabelled view 1; view 2]; loss = soft-label CE on the labelled part +
lambda_u MSE(softmax, targets) on the rest, lambda_u = 15 ramped linearly over all epochs. Adam lr 0.002,
no schedule. The last epoch's model is returned (the official code keeps the best clean *test* accuracy;
a defender cannot).

Our choices, and the budget:
- The seed pool, 10 images per class, comes from the defender's clean images (the 500 FT and ANP get):
  ASD uses clean data, and the official code draws its seeds with the ground-truth poison flags.
- `iterations` per epoch: the official 1,024 (12 passes over CIFAR-10's 50k at 192 images each) is the
  default; `iterations: null` makes an epoch one pass over the training set (its size / 192), the
  reduced budget the quick-profile grids run, said in their reports.
- Losses for the split are measured in eval mode on the un-augmented images (the official code measures
  them through the training transform).
- One forward pass over the whole mixed batch (the official code interleaves three, so that BatchNorm
  sees mixed statistics in each; one pass sees all of them).
The epoch loop checkpoints after every epoch as the run's phase "asd".
"""

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.options import component, option
from eigenguard.training.evaluate import eval_logits

RCE_LOG = -math.log(1e-4)


def symmetric_ce(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.1, beta: float = 1.0) -> torch.Tensor:
    """Per-sample SCE: alpha CE + beta RCE, RCE = -log(1e-4) (1 - p_y) (the one-hot clamped at 1e-4)."""
    p_true = logits.float().softmax(1).gather(1, labels[:, None]).squeeze(1).clamp(min=1e-7)
    return alpha * F.cross_entropy(logits.float(), labels, reduction="none") + beta * RCE_LOG * (1 - p_true)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    q = p.pow(1 / temperature)
    return q / q.sum(1, keepdim=True)


@component
class ASD(Defense):
    name = "asd"
    needs_clean_pool = True
    final_evaluation = True

    epochs: int | None = option(None, "epochs over the three stages (null: the config's)", ">= 4")
    iterations: int | None = option(1024, "MixMatch steps per epoch (null: one pass over the training set)", ">= 1")
    batch_size: int = option(64, "labelled and unlabelled images per step, each", ">= 1")
    lr: float = option(0.002, "Adam lr", "> 0")
    seeds_per_class: int = option(10, "clean images per class in the seed pool", ">= 1")
    clean_fraction: float = option(0.5, "fraction of the training set kept labelled in stages 2 and 3", "(0, 1)")
    meta_lr: float = option(0.015, "Adam lr of the virtual model of the meta-split", "> 0")
    temperature: float = option(0.5, "sharpening temperature of the guessed labels", "> 0")
    mixup_alpha: float = option(0.75, "Beta parameter of MixUp", "> 0")
    lambda_u: float = option(15.0, "weight of the unlabelled loss (ramped up linearly)", ">= 0")

    # -- the split --------------------------------------------------------------------------------

    def losses(self, model: nn.Module, data: ImageDataset, ctx: DefenseContext) -> torch.Tensor:
        t = ctx.trainer
        logits = eval_logits(model, data, t.normalize, t.config.eval_batch_size, t.amp)
        return symmetric_ce(logits, data.labels)

    def clean_pool(self, model: nn.Module, epoch: int, epochs: int, ctx: DefenseContext) -> torch.Tensor:
        """Indices into the training set of this epoch's D_C (besides the seeds)."""
        data = ctx.train_set
        first, second = epochs // 2, (3 * epochs) // 4
        loss = self.losses(model, data, ctx)
        if epoch < first:  # stage 1: per class, the lowest-loss ones, growing in 11 steps
            step = min(11, (12 * epoch) // first)
            per_class = round(step * 10 * (len(data) / data.num_classes) / 5000)
            chosen = []
            for c in range(data.num_classes):
                members = torch.nonzero(data.labels == c).flatten()
                chosen.append(members[loss[members].argsort()[:per_class]])
            return torch.cat(chosen).sort().values
        keep = round(self.clean_fraction * len(data))
        if epoch < second:  # stage 2: the lowest-loss half, every class together
            return loss.argsort()[:keep].sort().values
        virtual = copy.deepcopy(model)  # stage 3: the meta-split
        self._virtual_epoch(virtual, ctx)
        drop = loss - self.losses(virtual, data, ctx)
        return drop.argsort()[:keep].sort().values

    def _virtual_epoch(self, virtual: nn.Module, ctx: DefenseContext) -> None:
        t, data = ctx.trainer, ctx.train_set
        stages = list(virtual.stages.values())[-2:] if hasattr(virtual, "stages") else []
        params = [p for m in [*stages, virtual.head] for p in m.parameters()]
        optimizer = torch.optim.Adam(params, lr=self.meta_lr)
        virtual.train()
        order = torch.randperm(len(data), generator=t.generator, device=data.images.device)
        for start in range(0, len(data), 128):
            idx = order[start : start + 128]
            loss = F.cross_entropy(virtual(t.normalize(t.augment(data.images[idx]))), data.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    # -- MixMatch -----------------------------------------------------------------------------------

    def mixmatch_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        labelled: ImageDataset,
        unlabelled: torch.Tensor,
        epoch: int,
        epochs: int,
        iterations: int,
        ctx: DefenseContext,
    ) -> float:
        t, device, b = ctx.trainer, labelled.images.device, self.batch_size
        classes = labelled.num_classes
        gen = t.generator
        beta = torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha)
        model.train()
        total = 0.0
        for i in range(iterations):
            li = torch.randint(0, len(labelled), (b,), generator=gen, device=device)
            ui = torch.randint(0, len(unlabelled), (b,), generator=gen, device=device)
            x = t.normalize(t.augment(labelled.images[li]))
            y = F.one_hot(labelled.labels[li], classes).float()
            u1 = t.normalize(t.augment(unlabelled[ui]))
            u2 = t.normalize(t.augment(unlabelled[ui]))
            with torch.no_grad():
                guess = (model(u1).float().softmax(1) + model(u2).float().softmax(1)) / 2
                guess = sharpen(guess, self.temperature)
            inputs, targets = torch.cat([x, u1, u2]), torch.cat([y, guess, guess])
            lam = float(beta.sample())  # torch's global stream (seeded by the run, checkpointed)
            lam = max(lam, 1 - lam)
            perm = torch.randperm(len(inputs), generator=gen, device=device)
            mixed = lam * inputs + (1 - lam) * inputs[perm]
            mixed_targets = lam * targets + (1 - lam) * targets[perm]
            logits = model(mixed).float()
            loss_x = -(mixed_targets[:b] * logits[:b].log_softmax(1)).sum(1).mean()
            loss_u = (logits[b:].softmax(1) - mixed_targets[b:]).pow(2).mean()
            ramp = min(max((epoch + i / iterations) / epochs, 0.0), 1.0)
            loss = loss_x + self.lambda_u * ramp * loss_u
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        return total / iterations

    # -- the run --------------------------------------------------------------------------------------

    def seeds(self, ctx: DefenseContext) -> ImageDataset:
        """`seeds_per_class` of the defender's clean images per class (its first ones: the pool is a
        random draw already)."""
        pool = ctx.clean_pool
        chosen = [torch.nonzero(pool.labels == c).flatten()[: self.seeds_per_class] for c in range(pool.num_classes)]
        return pool.subset(torch.cat(chosen).sort().values)

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        t, data = ctx.trainer, ctx.train_set
        epochs = self.epochs or t.config.epochs
        iterations = self.iterations or max(1, len(data) // (3 * self.batch_size))
        model = t.new_model(num_classes=data.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        seeds = self.seeds(ctx)
        start = t.resume_phase(self.name, {"model": model}, {"adam": optimizer})  # resumed: after epoch `start`
        poisoned = torch.zeros(len(data), dtype=torch.bool, device=data.images.device)
        poisoned[ctx.poison_indices] = True
        report: dict[str, Any] = {"iterations": iterations, "epochs": epochs}
        for epoch in range(start, epochs):
            chosen = self.clean_pool(model, epoch, epochs, ctx)
            report["last_clean_pool"] = ctx.precision_recall(chosen)
            rest = torch.ones(len(data), dtype=torch.bool, device=data.images.device)
            rest[chosen] = False
            labelled = ImageDataset(
                torch.cat([seeds.images, data.images[chosen]]), torch.cat([seeds.labels, data.labels[chosen]]),
                data.classes, data.mean, data.std,
            )  # fmt: skip
            loss = self.mixmatch_epoch(model, optimizer, labelled, data.images[rest], epoch, epochs, iterations, ctx)
            t.log(
                {
                    "phase": self.name,
                    "epoch": epoch + 1,
                    "train_loss": round(loss, 6),
                    "clean_pool": len(labelled),
                    "clean_pool_poisoned": int(poisoned[chosen].sum()),
                }
            )  # fmt: skip  (ground truth: the log only)
            t.save_phase(self.name, epoch + 1, epochs, {"model": model}, {"adam": optimizer})
        return model, report
