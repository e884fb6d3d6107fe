"""GTSRB (German Traffic Sign Recognition Benchmark) on torchvision's on-disk layout, with a tensor cache.

Layout under `<root>/gtsrb/`:
    GTSRB/Training/000NN/*.ppm (+ GT-000NN.csv)   training images; the folder name is the class id
    GTSRB/Final_Test/Images/*.ppm                  test images
    GT-final_test.csv                              test labels: `Filename;...;ClassId`, ';'-separated

The ~50k PPMs of varying size are decoded once, resized to `image_size` squared, and cached in
`<root>/gtsrb/eigenguard-cache-<size>.safetensors`, used while it is at least as new as the sources.
"""

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from eigenguard.data.decode import decode_images
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.sources import dataset_not_found, fetch_with_torchvision, one_line, resolve_root
from eigenguard.errors import EigenguardError
from eigenguard.run_directory import atomic_save_tensors

logger = logging.getLogger(__name__)

NUM_CLASSES = 43
CLASSES = [str(i) for i in range(NUM_CLASSES)]
MEAN = (0.3403, 0.3121, 0.3214)
STD = (0.2724, 0.2608, 0.2669)
CACHE_FORMAT = "eigenguard-gtsrb-cache-v1"
CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class _Layout:
    base: Path  # <root>/gtsrb

    @property
    def train_dir(self) -> Path:
        return self.base / "GTSRB" / "Training"

    @property
    def test_dir(self) -> Path:
        return self.base / "GTSRB" / "Final_Test" / "Images"

    @property
    def test_csv(self) -> Path:
        return self.base / "GT-final_test.csv"

    def cache(self, size: int) -> Path:
        return self.base / f"eigenguard-cache-{size}.safetensors"

    def missing(self) -> list[str]:
        parts = [(self.train_dir, True), (self.test_dir, True), (self.test_csv, False)]
        return [
            str(p.relative_to(self.base.parent)) + ("/" if is_dir else "")
            for p, is_dir in parts
            if not (p.is_dir() if is_dir else p.is_file())
        ]

    def class_dirs(self) -> list[tuple[Path, int]]:
        found = []
        for entry in sorted(self.train_dir.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not entry.name.isdigit() or int(entry.name) >= NUM_CLASSES:
                raise EigenguardError(
                    f"unexpected folder {entry} in the GTSRB training set: class folders are 00000..00042"
                )
            found.append((entry, int(entry.name)))
        return found

    def newest_source_mtime(self) -> int:
        paths = [self.train_dir, self.test_dir, self.test_csv, *(d for d, _ in self.class_dirs())]
        return max(p.stat().st_mtime_ns for p in paths)


def _train_samples(layout: _Layout) -> tuple[list[Path], list[int]]:
    paths: list[Path] = []
    labels: list[int] = []
    for directory, label in layout.class_dirs():
        files = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".ppm")
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels


def _test_samples(layout: _Layout) -> tuple[list[Path], list[int]]:
    path = layout.test_csv
    paths: list[Path] = []
    labels: list[int] = []
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle, delimiter=";", skipinitialspace=True)
            if reader.fieldnames is None or not {"Filename", "ClassId"} <= set(reader.fieldnames):
                raise EigenguardError(f"GTSRB label file {path} lacks the 'Filename' and 'ClassId' columns")
            for line, row in enumerate(reader, start=2):
                try:
                    label = int(row["ClassId"])
                except (TypeError, ValueError):
                    raise EigenguardError(f"GTSRB label file {path} line {line}: bad ClassId") from None
                if not 0 <= label < NUM_CLASSES or not row["Filename"]:
                    raise EigenguardError(f"GTSRB label file {path} line {line}: bad row {dict(row)}")
                paths.append(layout.test_dir / row["Filename"])
                labels.append(label)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EigenguardError(f"cannot read GTSRB label file {path}: {one_line(exc)}") from None
    return paths, labels


def _decode_split(paths: list[Path], labels: list[int], size: int, where: Path) -> ImageDataset:
    if not paths:
        raise EigenguardError(f"no GTSRB images found in {where}")
    images = decode_images(paths, size)
    return ImageDataset(images, torch.tensor(labels, dtype=torch.int64), list(CLASSES), MEAN, STD)


def _read_cache(path: Path, size: int) -> tuple[ImageDataset, ImageDataset] | None:
    """The cached splits, or None (with a warning) if the cache is unreadable or does not fit."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != CACHE_FORMAT or metadata.get("image_size") != str(size):
                raise ValueError("written for another format or image size")
            tensors = {key: handle.get_tensor(key) for key in CACHE_KEYS}
        splits = []
        for split in ("train", "test"):
            images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
            if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
                raise ValueError(f"{split} images have shape {tuple(images.shape)}")
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < NUM_CLASSES:
                raise ValueError(f"{split} labels out of range")
            splits.append(ImageDataset(images, labels, list(CLASSES), MEAN, STD))
    except Exception as exc:
        logger.warning("ignoring unusable GTSRB cache %s (%s); decoding the images again", path, one_line(exc))
        return None
    return splits[0], splits[1]


def _write_cache(path: Path, size: int, train: ImageDataset, test: ImageDataset) -> None:
    """Write atomically (run_directory's atomic write); a failure only costs the cache, never the load.

    Unlike cache.py's entries this one lives beside the data and is keyed by the sources' age, not by a
    digest: it holds the decoded images themselves, valid while no source file is newer."""
    tensors = {
        "train_images": train.images,
        "train_labels": train.labels,
        "test_images": test.images,
        "test_labels": test.labels,
    }
    try:
        atomic_save_tensors(path, tensors, {"format": CACHE_FORMAT, "image_size": str(size)})
    except Exception as exc:
        logger.warning("could not write the GTSRB cache %s: %s", path, one_line(exc))


def _download(root: Path) -> None:
    from torchvision import datasets  # imported lazily: only needed to fetch

    for split in ("train", "test"):
        fetch_with_torchvision("gtsrb", root, lambda split=split: datasets.GTSRB(str(root), split=split, download=True))


def load_gtsrb(root: Path | None, download: bool = False, image_size: int = 32) -> tuple[ImageDataset, ImageDataset]:
    """GTSRB as uint8 (N, 3, image_size, image_size), 43 classes named "0".."42"."""
    root = resolve_root(root)
    layout = _Layout(root / "gtsrb")
    cache = layout.cache(image_size)
    missing = layout.missing()
    if missing and cache.is_file():  # sources gone (or partial) but decoded tensors kept: use them
        cached = _read_cache(cache, image_size)
        if cached is not None:
            return cached
    if missing and download:
        _download(root)
        missing = layout.missing()
    if missing:
        raise dataset_not_found("gtsrb", f"{', '.join(missing)} under {root}")
    if cache.is_file() and cache.stat().st_mtime_ns >= layout.newest_source_mtime():
        cached = _read_cache(cache, image_size)
        if cached is not None:
            return cached
    logger.info("decoding the GTSRB images under %s (one-time; cached in %s)", layout.base, cache)
    train = _decode_split(*_train_samples(layout), image_size, layout.train_dir)
    test = _decode_split(*_test_samples(layout), image_size, layout.test_dir)
    _write_cache(cache, image_size, train, test)
    return train, test
