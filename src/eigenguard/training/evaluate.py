"""Accuracy of a model on a device-resident ImageDataset, in large no-grad batches."""

import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.training.augment import Normalize


@torch.no_grad()
def predict(
    model: nn.Module, data: ImageDataset, normalize: Normalize, batch_size: int = 1024, amp: bool = False
) -> torch.Tensor:
    """Predicted class of every sample (int64, on the data's device). The model is put in eval mode."""
    was_training = model.training
    model.eval()
    preds = []
    for start in range(0, len(data), batch_size):
        x = normalize(data.images[start : start + batch_size])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            preds.append(model(x).argmax(dim=1))
    model.train(was_training)
    if not preds:
        return torch.empty(0, dtype=torch.int64, device=data.images.device)
    return torch.cat(preds)


def accuracy(
    model: nn.Module, data: ImageDataset, normalize: Normalize, batch_size: int = 1024, amp: bool = False
) -> float:
    """Fraction of `data` classified as its label (ASR when `data` is a triggered set labelled target)."""
    if len(data) == 0:
        return float("nan")
    preds = predict(model, data, normalize, batch_size, amp)
    return (preds == data.labels).float().mean().item()


@torch.no_grad()
def per_sample_loss(
    model: nn.Module, data: ImageDataset, normalize: Normalize, batch_size: int = 1024, amp: bool = False
) -> torch.Tensor:
    """Cross-entropy of every sample under the model in eval mode (float32, on the data's device)."""
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, len(data), batch_size):
        x = normalize(data.images[start : start + batch_size])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        losses.append(
            torch.nn.functional.cross_entropy(logits.float(), data.labels[start : start + batch_size], reduction="none")
        )
    model.train(was_training)
    return torch.cat(losses)


def evaluate_protocols(
    model: nn.Module,
    guards: list[nn.Module],
    test: ImageDataset,
    asr_set: ImageDataset | None,
    normalize: Normalize,
    *,
    eval_batch_size: int,
    paper_batch_size: int,
    amp: bool = False,
) -> dict[str, float | None]:
    """ACC and ASR; for a guarded model under both inference protocols.

    acc / asr: the guard's per-sample mode, each image filtered against the frozen history alone, so a
      prediction is what a deployed model would give that image on its own (for an unguarded model this
      is the only protocol).
    acc_paper / asr_paper: the paper's protocol, the clean and the triggered test sets evaluated separately
      in batch mode, with test batches of `paper_batch_size` filtered together against the history.
    """

    def measure(mode: str) -> tuple[float, float | None]:
        batch = eval_batch_size if mode == "per-sample" else paper_batch_size
        acc = accuracy(model, test, normalize, batch, amp)
        return acc, None if asr_set is None else accuracy(model, asr_set, normalize, batch, amp)

    result: dict[str, float | None] = {}
    modes = ("per-sample", "batch") if guards else ("per-sample",)
    saved = [getattr(g, "inference", None) for g in guards]
    try:
        for mode in modes:
            for g in guards:
                g.inference = mode
            acc, asr = measure(mode)
            suffix = "" if mode == "per-sample" else "_paper"
            result["acc" + suffix], result["asr" + suffix] = acc, asr
    finally:
        for g, inference in zip(guards, saved, strict=True):
            g.inference = inference
    return result
