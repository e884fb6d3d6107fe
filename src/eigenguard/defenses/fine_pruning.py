"""Fine-Pruning (Liu, Dolan-Gavitt & Garg, RAID 2018): prune dormant last-layer channels, then fine-tune.

Backdoor behaviour tends to live in channels that clean inputs leave dormant. Fine-Pruning ranks the
channels of the last convolutional stage by their mean activation on the defender's clean images and
prunes them from the least active up, while the clean accuracy holds, then fine-tunes the pruned model.

Here a channel is pruned by masking it at the classifier's input (the pooled output of the last stage),
as BackdoorBench does, since in a ResNet the last stage's output is a sum with the skip path and zeroing
one convolution would not silence the channel. Channels are pruned in steps of `step` (1%) of the
channels; pruning stops before the defender's clean accuracy (on the clean images, eval mode) falls by more
than `max_acc_drop` relative to the unpruned model (BackdoorBench's acc_ratio 0.1; it measures on the test
set, which a defender does not have; Liu et al. stop at a drop of a few points on held-out clean data).
The mask stays on through fine-tuning (FT's recipe by default) and is then folded into the classifier
weights, so the saved model is an ordinary model with zero columns.
"""

from typing import Any

import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.defenses.finetune import fine_tune
from eigenguard.models import Backbone
from eigenguard.options import component, option
from eigenguard.training.evaluate import accuracy, eval_logits
from eigenguard.training.features import FeatureTap, classifier


def mean_channel_activation(model: Backbone, images: ImageDataset, ctx: DefenseContext) -> torch.Tensor:
    """Mean over images and positions of each channel of the classifier's input (last stage, pooled)."""
    seen: list[torch.Tensor] = []
    with FeatureTap({"classifier": classifier(model)}, inputs=True, keep=lambda _n, x: seen.append(x.float().sum(0))):
        eval_logits(model, images, ctx.trainer.normalize, 256, ctx.trainer.amp)  # the tap collects the inputs
    return torch.stack(seen).sum(0) / len(images)


@component
class FinePruning(Defense):
    name = "fp"
    needs_clean_pool = True
    needs_backdoored = True
    final_evaluation = True

    max_acc_drop: float = option(0.1, "largest relative fall of the clean images' accuracy while pruning", "[0, 1)")
    step: float = option(0.01, "fraction of the channels pruned per step", "(0, 1]")
    epochs: int = option(10, "epochs of fine-tuning after pruning", ">= 0")
    lr: float = option(0.01, "SGD lr of the fine-tuning", "> 0")
    batch_size: int = option(64, "clean images per step", ">= 1")

    def choose_pruning(self, model: Backbone, ctx: DefenseContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """The channel mask (1 keep, 0 pruned) of the classifier input, and how it was reached."""
        t, pool = ctx.trainer, ctx.clean_pool
        order = mean_channel_activation(model, pool, ctx).argsort()  # least active first
        channels = len(order)
        mask = torch.ones(channels, device=order.device)
        handle = classifier(model).register_forward_pre_hook(lambda _m, args: (args[0] * mask,))
        try:
            base = accuracy(model, pool, t.normalize, 256, t.amp)
            floor = (1 - self.max_acc_drop) * base
            stride = max(1, round(self.step * channels))
            pruned, acc = 0, base
            for count in range(stride, channels, stride):
                mask[order[:count]] = 0
                trial = accuracy(model, pool, t.normalize, 256, t.amp)
                if trial < floor:
                    mask[order[pruned:count]] = 1  # undo the step that went too far
                    break
                pruned, acc = count, trial
        finally:
            handle.remove()
        return mask, {
            "channels": channels,
            "pruned_channels": pruned,
            "clean_acc_before": base,
            "clean_acc_pruned": acc,
        }

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.backdoored()
        mask, report = self.choose_pruning(model, ctx)
        linear = classifier(model)
        handle = linear.register_forward_pre_hook(lambda _m, args: (args[0] * mask,))
        try:
            fine_tune(model, ctx, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
        finally:
            handle.remove()
        with torch.no_grad():
            linear.weight.mul_(mask)  # fold the mask in: W (m * x) = (W * m) x
        ctx.trainer.log({"phase": "fp", "epoch": 0, "pruned_channels": report["pruned_channels"]})
        return model, report
