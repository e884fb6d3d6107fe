"""The self-describing run directory and its atomic writes.

Layout: config.yaml (resolved config + environment), log.csv (one row per epoch), metrics.json (final
numbers, written last: its presence means the run finished), model.safetensors (weights, config in the
metadata), split.safetensors (train / defense / poisoned indices into the original training set).
Every file is written to a temporary name in the same directory, then renamed: a reader never sees half a file.
"""

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from eigenguard.errors import EigenguardError


def _umask_mode() -> int:
    """0o666 under the process umask: what open() would give a new file (mkstemp makes them 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _umask_mode()  # read once: umask can only be read by setting it, which is not thread-safe


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_new_run_dir(path: Path) -> None:
    """A run never overwrites another: an existing path is bad input."""
    if path.exists():
        raise EigenguardError(f"run directory '{path}' already exists; choose another --out or remove it")


class RunDirectory:
    """Writes one run's files. Create it only after all input has been validated and loaded."""

    def __init__(self, path: Path) -> None:
        check_new_run_dir(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise EigenguardError(f"run directory '{path}' already exists; choose another --out") from None
        self.path = path
        self._log_rows: list[dict[str, Any]] = []

    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))

    def append_log(self, row: Mapping[str, Any]) -> None:
        """Add an epoch row and rewrite log.csv whole (atomic; a few KB even for 100 epochs).

        Rows of different phases may carry different fields: the header is every field seen, in order of
        first appearance, and a row leaves the fields it lacks empty.
        """
        self._log_rows.append(dict(row))
        fields = list(dict.fromkeys(k for r in self._log_rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._log_rows)
        atomic_write_text(self.path / "log.csv", buffer.getvalue())

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        atomic_write_text(self.path / "metrics.json", json.dumps(dict(metrics), indent=2) + "\n")

    def save_model(self, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> None:
        atomic_save_tensors(self.path / "model.safetensors", state_dict, {"config": json.dumps(dict(config))})

    def save_split(self, tensors: Mapping[str, torch.Tensor]) -> None:
        atomic_save_tensors(self.path / "split.safetensors", tensors, {})
