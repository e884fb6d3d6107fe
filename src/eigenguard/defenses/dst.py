"""D-ST (Chen, Wu & Wang, NeurIPS 2022): D-BR's sample distinguishment, then secure training from scratch.

The split is D-BR's (dbr.py, its options shared): the lowest `clean_ratio` FCT scores flagged clean, the
highest `poison_ratio` poisoned, the rest uncertain. Then two stages, as the official code
(SCLBD/Effective_backdoor_defense, ST/):
1. A fresh feature extractor (the model without its last linear layer) and a projection head (dim ->
   dim -> 128, ReLU, L2-normalised) train from scratch on every training image, two augmented views each
   (random resized crop of 20-100% of the area, flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grey with
   p 0.2), with a semi-supervised SupCon loss: a flagged-clean anchor's positives are its other view and
   every batch image of its label; a poisoned or uncertain anchor's only positive is its other view. The
   loss is scaled by temperature / 0.07, temperature 0.1. `st_epochs` 200, SGD lr 0.5, momentum 0.9,
   wd 1e-4, cosine (to lr / 1000) after 10 warm-up epochs, batch 512.
2. The extractor frozen, a new linear layer trains `head_epochs` 10 at lr 5 (momentum 0.9, batch 512, the
   same augmentation) on CE(flagged clean) - 0.001 CE(flagged poisoned); uncertain images are not used.
The last epoch's model is returned (the official classifier script keeps the best test accuracy).

Our choices: the SupCon loss's positives follow the official mask, including its asymmetry (a clean
anchor also counts same-label uncertain images as positives; an uncertain anchor does not). The hue jitter
is a rotation in YIQ space (data/transforms.py). Budget: the official 200 epochs are the default; the quick
grids run a reduced `st_epochs`, said in their reports. Both stages checkpoint after every epoch (run
phases "st-extractor" and "st-head"); a resumed run redoes only the split (the SD model comes from D-BR's
cache, shared with D-BR of the same setting).
"""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import color_jitter, random_flip, random_resized_crop
from eigenguard.defenses.base import DefenseContext
from eigenguard.defenses.dbr import SensitivitySplit
from eigenguard.options import component, option
from eigenguard.training.features import FeatureTap, classifier

BASE_TEMPERATURE = 0.07


def consistency_supcon(
    z: torch.Tensor, labels: torch.Tensor, clean: torch.Tensor, temperature: float
) -> torch.Tensor:  # fmt: skip
    """SupCon over 2N normalised embeddings (view 1 of N images, then view 2): an anchor flagged clean has as
    positives every other embedding of its label, any other anchor only its own other view."""
    n2 = len(z)
    labels2, clean2 = labels.repeat(2), clean.repeat(2)
    logits = z @ z.T / temperature
    self_mask = torch.eye(n2, dtype=torch.bool, device=z.device)
    positives = (labels2[:, None] == labels2[None, :]) & clean2[:, None]
    twin = torch.roll(self_mask, n2 // 2, dims=1)  # i <-> i + N
    positives = (positives | twin) & ~self_mask
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - logits.logsumexp(1, keepdim=True)
    mean_log_prob = (log_prob.masked_fill(~positives, 0).sum(1)) / positives.sum(1)
    return -(temperature / BASE_TEMPERATURE) * mean_log_prob.mean()


@component
class DST(SensitivitySplit):
    name = "d-st"
    final_evaluation = True  # its head trains in a loop of its own, which does not evaluate

    st_epochs: int = option(200, "epochs of the extractor's semi-supervised contrastive training", ">= 1")
    st_lr: float = option(0.5, "its SGD peak lr", "> 0")
    temperature: float = option(0.1, "temperature of the SupCon loss", "> 0")
    head_epochs: int = option(10, "epochs of the linear head on the frozen extractor", ">= 1")
    head_lr: float = option(5.0, "the head's SGD lr", "> 0")
    st_batch_size: int = option(512, "batch size of both stages", ">= 2")

    def _views(self, x: torch.Tensor, ctx: DefenseContext) -> torch.Tensor:
        g = ctx.trainer.generator
        x = random_resized_crop(x, g)
        x = random_flip(x, g) if ctx.trainer.flip else x
        return ctx.trainer.normalize(color_jitter(x, g))

    def _batches(self, n: int, ctx: DefenseContext) -> list[torch.Tensor]:
        t = ctx.trainer
        order = torch.randperm(n, generator=t.generator, device=t.device)
        size = min(self.st_batch_size, n)
        return [order[s : s + size] for s in range(0, n - size + 1, size)]

    def extractor(self, model: nn.Module, data: ImageDataset, clean: torch.Tensor, ctx: DefenseContext) -> None:
        """Stage 1: train `model`'s layers below its last linear one with the consistency SupCon loss."""
        t = ctx.trainer
        last = classifier(model)
        dim = last.in_features
        projection = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 128)).to(t.device)
        params = [p for n, p in model.named_parameters() if not any(p is q for q in last.parameters())]
        optimizer = torch.optim.SGD([*params, *projection.parameters()], lr=self.st_lr, momentum=0.9, weight_decay=1e-4)
        steps = max(1, len(data) // min(self.st_batch_size, max(len(data), 1)))  # batches per epoch
        total, warmup = self.st_epochs * steps, min(10, self.st_epochs // 2) * steps

        def lr_at(step: int) -> float:
            if step < warmup:
                return 0.01 + (self.st_lr - 0.01) * step / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            low = self.st_lr * 1e-3
            return low + (self.st_lr - low) * (1 + math.cos(math.pi * progress)) / 2

        flag = torch.zeros(len(data), dtype=torch.bool, device=t.device)
        flag[clean] = True
        modules, optimizers = {"model": model, "projection": projection}, {"sgd": optimizer}
        start = t.resume_phase("st-extractor", modules, optimizers)  # resumed: after epoch `start`
        model.train()
        step = start * steps
        with FeatureTap({"features": last}, inputs=True) as tap:
            for epoch in range(start + 1, self.st_epochs + 1):
                losses = []
                for idx in self._batches(len(data), ctx):
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(step)
                    x = data.images[idx]
                    model(torch.cat([self._views(x, ctx), self._views(x, ctx)]))
                    z = F.normalize(projection(tap.outputs["features"].flatten(1).float()), dim=1)
                    loss = consistency_supcon(z, data.labels[idx], flag[idx], self.temperature)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                    step += 1
                t.log(
                    {"phase": "st-extractor", "epoch": epoch, "train_loss": round(sum(losses) / max(len(losses), 1), 6)}
                )
                t.save_phase("st-extractor", epoch, self.st_epochs, modules, optimizers)

    def head(
        self, model: nn.Module, data: ImageDataset, clean: torch.Tensor, poisoned: torch.Tensor, ctx: DefenseContext
    ) -> None:
        """Stage 2: a fresh last linear layer on the frozen extractor, CE(clean) - 0.001 CE(poisoned)."""
        t = ctx.trainer
        last = classifier(model)
        last.reset_parameters()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in last.parameters():
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(last.parameters(), lr=self.head_lr, momentum=0.9, weight_decay=0.0)
        used = torch.cat([clean, poisoned])
        is_clean = torch.cat([torch.ones_like(clean, dtype=torch.bool), torch.zeros_like(poisoned, dtype=torch.bool)])
        start = t.resume_phase("st-head", {"head": last}, {"sgd": optimizer})
        model.eval()  # the extractor frozen, BatchNorm statistics included
        for epoch in range(start + 1, self.head_epochs + 1):
            losses = []
            for batch in self._batches(len(used), ctx):
                idx, c = used[batch], is_clean[batch]
                logits = model(self._views(data.images[idx], ctx))
                ce = F.cross_entropy(logits, data.labels[idx], reduction="none")
                loss = (ce[c].sum() - 0.001 * ce[~c].sum()) / len(idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            t.log({"phase": "st-head", "epoch": epoch, "train_loss": round(sum(losses) / max(len(losses), 1), 6)})
            t.save_phase("st-head", epoch, self.head_epochs, {"head": last}, {"sgd": optimizer})
        for p in model.parameters():
            p.requires_grad_(True)

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        sd_model, sd_report = self.distinguishing_model(ctx)
        clean, poisoned = self.split(self.sensitivity(sd_model, ctx.train_set, ctx))
        del sd_model
        model = ctx.trainer.new_model(num_classes=ctx.train_set.num_classes)
        self.extractor(model, ctx.train_set, clean, ctx)
        self.head(model, ctx.train_set, clean, poisoned, ctx)
        split = {
            "clean_split": ctx.precision_recall(clean),
            "poison_split": ctx.set_aside(poisoned, "pushed away by the head's loss"),
        }
        return model, {**split, **sd_report}
