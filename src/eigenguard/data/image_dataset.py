"""The in-memory dataset type every loader returns: uint8 images and int64 labels, on one device."""

from dataclasses import dataclass, field

import torch


@dataclass
class ImageDataset:
    """A labelled image set held as two tensors.

    images: uint8, shape (N, C, H, W); labels: int64, shape (N,). `classes` names each label.
    `mean` / `std` are per-channel statistics in [0, 1] units used to normalise model inputs.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] = field(default=(0.5,))
    std: tuple[float, ...] = field(default=(0.5,))

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: torch.Tensor) -> "ImageDataset":
        """The samples at `indices` (a LongTensor), same classes and statistics."""
        idx = indices.to(self.images.device)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.mean, self.std)

    def to(self, device: torch.device | str) -> "ImageDataset":
        return ImageDataset(self.images.to(device), self.labels.to(device), self.classes, self.mean, self.std)
