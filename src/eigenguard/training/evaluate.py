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
