"""MNIST and Fashion-MNIST from their four IDX files, parsed by our own reader (`eigenguard.data.idx`)."""

from dataclasses import dataclass
from pathlib import Path

import torch

from eigenguard.data.idx import read_idx
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.sources import dataset_not_found, fetch_with_torchvision, resolve_root
from eigenguard.errors import EigenguardError

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_SIDE = 28

# Installed by the Debian package `dataset-fashion-mnist`; searched after the data root, with no flag needed.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class _Variant:
    name: str
    torchvision_folder: str  # <root>/<folder>/raw is where torchvision downloads to
    plain_folder: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


MNIST = _Variant("mnist", "MNIST", "mnist", tuple(str(d) for d in range(10)), (0.1307,), (0.3081,))
FASHION_MNIST = _Variant("fashion-mnist", "FashionMNIST", "fashion-mnist", FASHION_CLASSES, (0.2860,), (0.3530,))


def _candidate_dirs(variant: _Variant, root: Path, explicit: bool) -> list[Path]:
    """Where to look under `root`; the Debian package's copy too, unless the user named the root."""
    dirs = [root, root / variant.torchvision_folder / "raw", root / variant.plain_folder]
    if variant is FASHION_MNIST and not explicit:
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def _files_in(directory: Path) -> list[Path] | None:
    """The four IDX files in `directory` (each raw or .gz, raw preferred), or None if any is missing."""
    found = []
    for stem in IDX_FILES:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found


def _find_files(variant: _Variant, root: Path, explicit: bool) -> list[Path] | None:
    for directory in _candidate_dirs(variant, root, explicit):
        files = _files_in(directory)
        if files is not None:
            return files
        present = [s for s in IDX_FILES if (directory / s).is_file() or (directory / f"{s}.gz").is_file()]
        if present and directory != DEBIAN_FASHION_MNIST:  # a copy half there is a mistake, not a miss
            missing = ", ".join(f"{s}[.gz]" for s in IDX_FILES if s not in present)
            raise EigenguardError(
                f"'{directory}' holds an incomplete {variant.name} (missing {missing}); "
                "add the missing files or point --data-root elsewhere"
            )
    return None


def _load_split(variant: _Variant, images_path: Path, labels_path: Path) -> ImageDataset:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dim() != 3 or tuple(images.shape[1:]) != (IMAGE_SIDE, IMAGE_SIDE):
        raise EigenguardError(
            f"IDX file {images_path} holds shape {tuple(images.shape)}; expected (N, {IMAGE_SIDE}, {IMAGE_SIDE})"
        )
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise EigenguardError(
            f"IDX file {labels_path} holds shape {tuple(labels.shape)}; expected ({images.shape[0]},) "
            f"to match {images_path.name}"
        )
    if labels.numel() and int(labels.max()) >= len(variant.classes):
        raise EigenguardError(
            f"IDX file {labels_path} has label {int(labels.max())}; {variant.name} has {len(variant.classes)} classes"
        )
    return ImageDataset(
        images.unsqueeze(1).contiguous(),
        labels.to(torch.int64),
        list(variant.classes),
        variant.mean,
        variant.std,
    )


def _download(variant: _Variant, root: Path) -> None:
    from torchvision import datasets  # imported lazily: only needed to fetch

    cls = datasets.MNIST if variant is MNIST else datasets.FashionMNIST
    for train in (True, False):
        fetch_with_torchvision(variant.name, root, lambda train=train: cls(str(root), train=train, download=True))


def _load(variant: _Variant, root: Path | None, download: bool) -> tuple[ImageDataset, ImageDataset]:
    explicit = root is not None
    root = resolve_root(root)
    files = _find_files(variant, root, explicit)
    if files is None and download:
        _download(variant, root)
        files = _find_files(variant, root, explicit)
    if files is None:
        names = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES)
        where = ", ".join(str(d) for d in _candidate_dirs(variant, root, explicit))
        raise dataset_not_found(variant.name, f"{names} in {where}")
    train_images, train_labels, test_images, test_labels = files
    return _load_split(variant, train_images, train_labels), _load_split(variant, test_images, test_labels)


def source_dir(name: str, root: Path | None) -> Path | None:
    """The directory the loader of `name` (mnist or fashion-mnist) reads for `root`; None if it holds no copy."""
    files = _find_files(MNIST if name == MNIST.name else FASHION_MNIST, resolve_root(root), root is not None)
    return None if files is None else files[0].parent


def load_mnist(root: Path | None, download: bool = False, image_size: int = 32) -> tuple[ImageDataset, ImageDataset]:
    """MNIST (train 60k, test 10k) as uint8 (N, 1, 28, 28); `image_size` is ignored (native 28x28)."""
    return _load(MNIST, root, download)


def load_fashion_mnist(
    root: Path | None, download: bool = False, image_size: int = 32
) -> tuple[ImageDataset, ImageDataset]:
    """Fashion-MNIST as uint8 (N, 1, 28, 28), also found in the Debian package's directory."""
    return _load(FASHION_MNIST, root, download)
