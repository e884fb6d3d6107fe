"""The one cache mechanism for expensive artifacts eigenguard reuses across runs (CLB's surrogate and
perturbed images, the input-aware generators, D-BR's sample-distinguishment model, backdoored models), and
the keys of grid cells.

An entry's name hashes everything that decides it: `digest` of its settings (JSON, sorted keys) and, where
a training set decides it, that set's `fingerprint` (shape, images and labels). Any change gives another
name, so a stale entry is never served. An entry is filled once: `filling` holds a lock beside it while a
process checks for it and computes it, and the entry appears whole (written under a temporary name, then
renamed), so two processes that need the same missing entry compute it once. `cached_tensors` is the
pattern for a safetensors file; backdoored models (whole run directories) use `filling` directly.

Where: `cache_dir` (config), else $EIGENGUARD_CACHE, else ~/.cache/eigenguard.
"""

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.run_directory import atomic_save_tensors


def cache_root(configured: str | None = None) -> Path:
    if configured:
        return Path(configured)
    return Path(os.environ.get("EIGENGUARD_CACHE") or Path.home() / ".cache" / "eigenguard")


def digest(settings: Any, *fingerprints: str, length: int = 20) -> str:
    """A hex key of `settings` (anything JSON can write; other values by str) and dataset fingerprints."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for f in fingerprints:
        h.update(f.encode())
    return h.hexdigest()[:length]


def fingerprint(data: ImageDataset) -> str:
    """A hash of a dataset's shape, images and labels (the poisoned training set, for a cache key)."""
    h = hashlib.sha256(str(tuple(data.images.shape)).encode())
    h.update(data.images.cpu().contiguous().numpy().tobytes())
    h.update(data.labels.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextmanager
def filling(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on `.<entry>.lock` (beside it) while checking for and filling a cache entry.

    Two processes that need the same missing entry (two workers of a grid, two runners) then compute it
    once: the second waits for the lock and finds the entry. The lock is advisory (fcntl.flock), released
    by the kernel if the holder dies, so a crashed process cannot leave it stuck.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


Tensors = dict[str, torch.Tensor]


def cached_tensors(
    path: Path, compute: Callable[[], tuple[Tensors, dict[str, str]]], device: str | torch.device = "cpu"
) -> tuple[Tensors, bool]:
    """The tensors stored at `path`, or `compute()`'s (tensors, metadata) stored there first, atomically,
    under the entry's lock. Returns (tensors, whether they came from the cache)."""
    with filling(path):
        if path.exists():
            return load_file(str(path), device=str(device)), True
        tensors, metadata = compute()
        atomic_save_tensors(path, tensors, metadata)
        return tensors, False
