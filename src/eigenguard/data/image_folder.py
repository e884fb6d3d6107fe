"""A user's own images: `<root>/train/<class>/*` and `<root>/test/<class>/*` (`val/` if no `test/`)."""

from pathlib import Path

import torch

from eigenguard.data.decode import decode_images
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.sources import dataset_not_found
from eigenguard.errors import EigenguardError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".pbm", ".gif", ".tif", ".tiff", ".webp"}
)
STATS_CHUNK = 4096


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(split_dir.iterdir()) if d.is_dir() and _visible(d)}


def _samples(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    index = {name: i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for name, directory in _class_dirs(split_dir).items():
        if name not in index:
            raise EigenguardError(
                f"class folder {directory} has no counterpart in the training set; train classes: {', '.join(classes)}"
            )
        files = sorted(
            p for p in directory.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    if not paths:
        raise EigenguardError(f"no images found under {split_dir} (expected {split_dir}/<class>/<image files>)")
    return paths, labels


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images in [0, 1] units (float64 sums, in chunks)."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in images.split(STATS_CHUNK):
        values = chunk.to(torch.float64) / 255.0
        total += values.sum(dim=(0, 2, 3))
        total_sq += values.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: avoid dividing by zero
    return tuple(mean.tolist()), tuple(std.tolist())


def image_folder_files(
    root: str | Path | None, indices: torch.Tensor, labels: torch.Tensor | None = None
) -> list[Path]:
    """The files of the training images at `indices` (into the whole train/ folder, in the loader's order),
    listed again: where the folder changed since it was loaded (an index past its end, or a file whose class
    folder is not its `labels` entry, the loader's labels), one error rather than misnamed rows."""
    if root is None:
        raise EigenguardError("dataset 'imagefolder' needs a directory: pass --data-root")
    train_dir = Path(root).expanduser() / "train"
    classes = list(_class_dirs(train_dir))
    paths, found = _samples(train_dir, classes)
    rows = indices.tolist()
    changed = bool(rows) and max(rows) >= len(paths)
    if not changed and labels is not None:
        changed = any(found[i] != int(c) for i, c in zip(rows, labels.tolist(), strict=True))
    if changed:
        raise EigenguardError(f"{train_dir} changed while it was read (files added, removed or moved); run again")
    return [paths[i] for i in rows]


def load_image_folder(
    root: Path | None, download: bool = False, image_size: int = 32
) -> tuple[ImageDataset, ImageDataset]:
    """Images decoded to RGB and resized to `image_size` squared; classes are the sorted train folder names.

    There is nothing to download: `root` must be given (--data-root). Mean/std come from the train images.
    """
    if root is None:
        raise EigenguardError(
            "dataset 'imagefolder' needs a directory: pass --data-root pointing at a folder with "
            "train/<class>/ and test/<class>/ (or val/<class>/) image folders"
        )
    root = Path(root).expanduser()
    train_dir = root / "train"
    test_dir = next((d for d in (root / "test", root / "val") if d.is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise dataset_not_found(
            "imagefolder",
            f"train/<class>/ and test/<class>/ (or val/<class>/) under {root}",
            downloadable=False,
        )
    classes = list(_class_dirs(train_dir))
    if not classes:
        raise EigenguardError(f"no class folders in {train_dir} (expected {train_dir}/<class>/<image files>)")
    train_paths, train_labels = _samples(train_dir, classes)
    test_paths, test_labels = _samples(test_dir, classes)
    train_images = decode_images(train_paths, image_size)
    test_images = decode_images(test_paths, image_size)
    mean, std = channel_stats(train_images)
    train = ImageDataset(train_images, torch.tensor(train_labels, dtype=torch.int64), classes, mean, std)
    test = ImageDataset(test_images, torch.tensor(test_labels, dtype=torch.int64), classes, mean, std)
    return train, test
