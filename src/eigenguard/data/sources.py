"""Shared plumbing for the dataset loaders: the default data root, the loader signature, and the errors for a
dataset that is absent or that torchvision failed to fetch."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.errors import EigenguardError

T = TypeVar("T")

DATA_ROOT_ENV = "EIGENGUARD_DATA"


class DatasetLoader(Protocol):
    """Loads (train, test) on CPU. `root=None` means the default data root."""

    def __call__(
        self, root: Path | None, download: bool = False, image_size: int = 32
    ) -> tuple[ImageDataset, ImageDataset]: ...


def default_data_root() -> Path:
    """`$EIGENGUARD_DATA` when set and non-empty, else `~/.cache/eigenguard/data`."""
    env = os.environ.get(DATA_ROOT_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "eigenguard" / "data"


def resolve_root(root: Path | None) -> Path:
    return default_data_root() if root is None else Path(root).expanduser()


def one_line(text: object) -> str:
    """Collapse whitespace so that an error message stays on one line."""
    return " ".join(str(text).split())


def dataset_not_found(name: str, looked_for: str, downloadable: bool = True) -> EigenguardError:
    """The single error for an absent dataset: what was searched where, and how to provide it."""
    how = "point --data-root (or EIGENGUARD_DATA) at a directory that holds it"
    if downloadable:
        how = f"pass --set download=true to fetch it with torchvision, or {how}"
    return EigenguardError(one_line(f"dataset '{name}' not found: looked for {looked_for}; {how}"))


def fetch_with_torchvision(name: str, root: Path, fetch: Callable[[], T]) -> T:
    """Run a torchvision download, turning its failures (no network, bad checksum, ...) into one error."""
    try:
        return fetch()
    except Exception as exc:
        raise EigenguardError(
            one_line(f"could not download dataset '{name}' with torchvision into {root}: {type(exc).__name__}: {exc}")
        ) from None
