"""CIFAR-10 and CIFAR-100 from their python-format directories, unpickled with the restricted `SafeUnpickler`.

torchvision is used only to download (its own CIFAR classes unpickle without restriction); the files are then
parsed here. Each batch is a dict with bytes keys: `data` (N, 3072) uint8 in CHW order, the labels list
(`labels` for CIFAR-10, `fine_labels` for CIFAR-100), `filenames` and `batch_label`.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.safe_pickle import safe_load_pickle
from eigenguard.data.sources import dataset_not_found, fetch_with_torchvision, resolve_root
from eigenguard.errors import EigenguardError

CHANNELS, SIDE = 3, 32
ROW_LENGTH = CHANNELS * SIDE * SIDE


@dataclass(frozen=True)
class _Variant:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    names_key: str
    labels_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = _Variant(
    "cifar10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
    "label_names",
    "labels",
    10,
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
)
CIFAR100 = _Variant(
    "cifar100",
    "cifar-100-python",
    ("train",),
    "test",
    "meta",
    "fine_label_names",
    "fine_labels",
    100,
    (0.5071, 0.4865, 0.4409),
    (0.2673, 0.2564, 0.2762),
)


def _get(mapping: dict[Any, Any], key: str, path: Path) -> Any:
    """`mapping[key]`, whether the pickle stored the key as bytes (Python 2) or str (Python 3)."""
    for candidate in (key.encode(), key):
        if candidate in mapping:
            return mapping[candidate]
    raise EigenguardError(f"CIFAR file {path} has no '{key}' entry")


def _load_dict(path: Path) -> dict[Any, Any]:
    obj = safe_load_pickle(path)
    if not isinstance(obj, dict):
        raise EigenguardError(f"CIFAR file {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _class_names(variant: _Variant, path: Path) -> list[str]:
    raw = _get(_load_dict(path), variant.names_key, path)
    if not isinstance(raw, list | tuple) or not all(isinstance(n, bytes | str) for n in raw):
        raise EigenguardError(f"CIFAR file {path}: '{variant.names_key}' is not a list of strings")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in raw]
    if len(names) != variant.num_classes:
        raise EigenguardError(
            f"CIFAR file {path} lists {len(names)} class names; {variant.name} has {variant.num_classes}"
        )
    return names


def _load_batch(variant: _Variant, path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_dict(path)
    data = _get(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        shape = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise EigenguardError(f"CIFAR file {path}: 'data' is {shape}, expected uint8 (N, {ROW_LENGTH})")
    try:
        labels = np.asarray(_get(batch, variant.labels_key, path))
    except (ValueError, TypeError):
        labels = np.asarray(None)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != data.shape[0]:
        raise EigenguardError(f"CIFAR file {path}: '{variant.labels_key}' is not {data.shape[0]} integer labels")
    if labels.size and (labels.min() < 0 or labels.max() >= variant.num_classes):
        raise EigenguardError(
            f"CIFAR file {path}: labels must lie in [0, {variant.num_classes}), found [{labels.min()}, {labels.max()}]"
        )
    return data, labels.astype(np.int64)


def _split(variant: _Variant, paths: list[Path], classes: list[str]) -> ImageDataset:
    batches = [_load_batch(variant, p) for p in paths]
    data = np.concatenate([b[0] for b in batches])  # always a fresh, writable copy
    labels = np.concatenate([b[1] for b in batches])
    images = torch.from_numpy(data).reshape(-1, CHANNELS, SIDE, SIDE)
    return ImageDataset(images, torch.from_numpy(labels), classes, variant.mean, variant.std)


def _missing(variant: _Variant, directory: Path) -> list[str]:
    return [f for f in variant.files if not (directory / f).is_file()]


def _download(variant: _Variant, root: Path) -> None:
    from torchvision import datasets  # imported lazily: only needed to fetch

    cls = datasets.CIFAR10 if variant is CIFAR10 else datasets.CIFAR100
    # torchvision verifies the archive's md5 before it unpickles anything itself.
    fetch_with_torchvision(variant.name, root, lambda: cls(str(root), train=True, download=True))


def _load(variant: _Variant, root: Path | None, download: bool) -> tuple[ImageDataset, ImageDataset]:
    root = resolve_root(root)
    directory = root / variant.folder
    missing = _missing(variant, directory)
    if missing and download:
        _download(variant, root)
        missing = _missing(variant, directory)
    if missing:
        detail = "" if not directory.is_dir() else f" (it exists but lacks {', '.join(missing)})"
        raise dataset_not_found(variant.name, f"{variant.folder}/ under {root}{detail}")
    classes = _class_names(variant, directory / variant.meta_file)
    train = _split(variant, [directory / f for f in variant.train_files], classes)
    test = _split(variant, [directory / variant.test_file], classes)
    return train, test


def load_cifar10(root: Path | None, download: bool = False, image_size: int = 32) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-10 (50k / 10k) as uint8 (N, 3, 32, 32); `image_size` is ignored (native 32x32)."""
    return _load(CIFAR10, root, download)


def load_cifar100(root: Path | None, download: bool = False, image_size: int = 32) -> tuple[ImageDataset, ImageDataset]:
    """CIFAR-100 with the 100 fine labels, as uint8 (N, 3, 32, 32); `image_size` is ignored."""
    return _load(CIFAR100, root, download)
