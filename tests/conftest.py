"""Shared fixtures: tiny datasets written in their real on-disk formats."""

import gzip
import struct
from pathlib import Path

import pytest
import torch


def write_idx(path: Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzip-compressed when the name ends in .gz)."""
    header = struct.pack(">HBB", 0, 0x08, tensor.dim()) + b"".join(struct.pack(">I", d) for d in tensor.shape)
    payload = header + tensor.contiguous().numpy().tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def make_mnist_like(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """A learnable 10-class 28x28 set in MNIST's raw layout: class c has brightness 20c (+ noise).

    Brightness survives random crops and flips, so the tiny set stays learnable under augmentation."""
    g = torch.Generator().manual_seed(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.randint(0, 40, (n, 28, 28), generator=g) + 20 * labels[:, None, None]
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", images.clamp(0, 255).to(torch.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    return root


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return make_mnist_like(tmp_path / "data")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own artifact cache (plain runs store their model there), never ~/.cache."""
    cache = tmp_path / "eigenguard-cache"
    monkeypatch.setenv("EIGENGUARD_CACHE", str(cache))
    return cache
