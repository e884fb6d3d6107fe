"""One epoch of SGD over a device-resident uint8 dataset. Read it top to bottom.

Speed habits, one line each:
- the data never leaves the device: a batch is an index into one uint8 tensor, no DataLoader, no workers;
- augmentation is two batched tensor ops (data/transforms.py), normalisation one fused multiply-add;
- on CUDA the forward runs under bf16 autocast with channels_last weights (set by the caller);
- the loss is summed on the device and read back (a GPU sync) only every `log_every` steps.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.data.transforms import Normalize, augment

StepCallback = Callable[[int, float], None]  # (steps done this epoch, mean loss so far)


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels, inputs) -> loss
BatchFn = Callable[[torch.Tensor], torch.Tensor]  # the batch's indices -> its normalised, augmented inputs


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    normalize: Normalize,
    generator: torch.Generator,
    crop_pad: int = 4,
    flip: bool = True,
    amp: bool = False,
    on_step: StepCallback | None = None,
    log_every: int = 10,
    extra_inputs: torch.Tensor | None = None,
    loss_fn: LossFn | None = None,
    sample_losses: torch.Tensor | None = None,
    make_batch: BatchFn | None = None,
) -> dict[str, float]:
    """Train for one pass over (images, labels); returns mean loss and accuracy on the augmented batches.

    The last incomplete batch is dropped (when there is at least one full batch), so BatchNorm never sees
    a batch of one. The order is a fresh permutation from `generator` every epoch.
    `extra_inputs` (already normalised) are appended to every batch; a module inside the model (EigenGuard
    with anchor rows) must remove them again, so the logits have one row per batch sample.
    `loss_fn(logits, labels, inputs)` replaces the mean cross-entropy (ABL's gradient ascent, NAD's
    attention distillation); `inputs` is the normalised batch the model saw.
    `sample_losses` (one float per sample, on the data's device): each sample's cross-entropy in the step
    that trained it is written there, in place (EigenGuard's anchors ranked without a pass of their own); a
    fresh epoch first sets it to +inf, so a sample in the dropped last batch is never among the lowest.
    `make_batch(idx)` replaces augment-then-normalise for a defense that builds some inputs itself (PDB's
    trigger is stamped outside uint8 range, then augmented); it draws from `generator` too.
    """
    if sample_losses is not None and loss_fn is not None:
        raise ValueError("sample_losses records the cross-entropy; it cannot be combined with another loss_fn")
    model.train()
    n = images.shape[0]
    steps = max(n // batch_size, 1)
    order = torch.randperm(n, device=images.device, generator=generator)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    seen = 0
    if sample_losses is not None:
        sample_losses.fill_(float("inf"))
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        x = normalize(augment(images[idx], crop_pad, flip, generator)) if make_batch is None else make_batch(idx)
        y = labels[idx]
        if extra_inputs is not None:
            x = torch.cat([x, extra_inputs.to(x.dtype)])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
            if sample_losses is not None:
                per_sample = F.cross_entropy(logits, y, reduction="none")
                sample_losses[idx] = per_sample.detach().float()
                loss = per_sample.mean()
            else:
                loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, y, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        seen += len(idx)
        if on_step is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            on_step(step + 1, loss_sum.item() / seen)
    return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen}
