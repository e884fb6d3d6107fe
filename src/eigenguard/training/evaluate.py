"""Accuracy of a model on a device-resident ImageDataset, in large no-grad batches."""

import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize
from eigenguard.guard.module import EigenGuard, inference_mode


@torch.no_grad()
def eval_logits(
    model: nn.Module, data: ImageDataset, normalize: Normalize, batch_size: int = 1024, amp: bool = False
) -> torch.Tensor:
    """Logits of every sample (float32, on the data's device), in eval mode; the mode is restored after."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, len(data), batch_size):
            x = normalize(data.images[start : start + batch_size])
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                chunks.append(model(x).float())
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0, 0, device=data.images.device)
    return torch.cat(chunks)


def accuracy(
    model: nn.Module, data: ImageDataset, normalize: Normalize, batch_size: int = 1024, amp: bool = False
) -> float:
    """Fraction of `data` classified as its label (ASR when `data` is a triggered set labelled target)."""
    if len(data) == 0:
        return float("nan")
    preds = eval_logits(model, data, normalize, batch_size, amp).argmax(dim=1)
    return (preds == data.labels).float().mean().item()


def per_sample_loss(
    model: nn.Module, data: ImageDataset, normalize: Normalize, batch_size: int = 1024, amp: bool = False
) -> torch.Tensor:
    """Cross-entropy of every sample under the model in eval mode (float32, on the data's device)."""
    logits = eval_logits(model, data, normalize, batch_size, amp)
    return torch.nn.functional.cross_entropy(logits, data.labels, reduction="none")


def evaluate_protocols(
    model: nn.Module,
    guards: list[EigenGuard],
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
    for mode in ("per-sample", "batch") if guards else ("per-sample",):
        with inference_mode(guards, mode):
            acc, asr = measure(mode)
        suffix = "" if mode == "per-sample" else "_paper"
        result["acc" + suffix], result["asr" + suffix] = acc, asr
    return result
