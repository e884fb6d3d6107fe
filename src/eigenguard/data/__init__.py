"""Datasets: every loader returns (train, test) `ImageDataset`s of uint8 images on CPU.

Files are parsed by our own code (restricted unpickler for CIFAR, IDX reader for MNIST, PIL for image files);
torchvision is used only to download when `download=True`.
"""

from pathlib import Path

from eigenguard.data.cifar import load_cifar10, load_cifar100
from eigenguard.data.gtsrb import load_gtsrb
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.image_folder import load_image_folder
from eigenguard.data.mnist import load_fashion_mnist, load_mnist, source_dir
from eigenguard.data.sources import DatasetLoader, default_data_root, resolve_root
from eigenguard.errors import EigenguardError
from eigenguard.registry import Registry

__all__ = ["DATASETS", "DatasetLoader", "ImageDataset", "data_dir", "default_data_root", "load_dataset"]

DATASETS: Registry[DatasetLoader] = Registry("dataset")
DATASETS.register("cifar10")(load_cifar10)
DATASETS.register("cifar100")(load_cifar100)
DATASETS.register("gtsrb")(load_gtsrb)
DATASETS.register("mnist")(load_mnist)
DATASETS.register("fashion-mnist")(load_fashion_mnist)
DATASETS.register("imagefolder")(load_image_folder)


def load_dataset(
    name: str, root: str | Path | None = None, download: bool = False, image_size: int = 32
) -> tuple[ImageDataset, ImageDataset]:
    """Load dataset `name` as (train, test) on CPU.

    `root` defaults to $EIGENGUARD_DATA, else ~/.cache/eigenguard/data (imagefolder requires it).
    `image_size` is the side that gtsrb and imagefolder images are resized to; cifar10/100 (32) and
    mnist/fashion-mnist (28) keep their native size.
    """
    loader = DATASETS.get(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise EigenguardError(f"image_size must be a positive integer, got {image_size!r}")
    path = None if root is None else Path(root).expanduser()
    # a root the user names is the one read: never a fallback to another copy behind their back
    if path is not None and not path.is_dir() and (path.exists() or not download):
        what = "is a file" if path.exists() else "does not exist"
        raise EigenguardError(
            f"data_root '{root}' {what}; allowed: a directory that holds the dataset (or --set download=true)"
        )
    return loader(path, download=download, image_size=image_size)


def data_dir(name: str, root: str | Path | None) -> str:
    """The directory `load_dataset(name, root)` reads: MNIST and Fashion-MNIST are looked for in a few places
    (and the Debian package's copy when no root is named); the other loaders read the root itself."""
    path = None if root is None else Path(root).expanduser()
    found = source_dir(name, path) if name in ("mnist", "fashion-mnist") else None
    return str((found or resolve_root(path)).resolve())
