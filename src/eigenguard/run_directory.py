"""The self-describing run directory and its atomic writes.

Layout: config.yaml (resolved config + environment), log.csv (one row per epoch), metrics.json (final
numbers, written last: its presence means the run finished), model.safetensors (weights, config in the
metadata), split.safetensors (train / defense / poisoned indices into the original training set),
set_aside.csv (a defense that sets training images aside: which, and what it did with them),
state.json (running / interrupted / failed / finished), .lock (while a process writes it), checkpoint/
(while it trains: training/checkpoint.py).
Every file is written to a temporary name in the same directory, then renamed: a reader never sees half a file.
"""

import csv
import io
import json
import math
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from eigenguard.config import (
    ATTACK_NONE,
    DEFENSE_NONE,
    LEGACY_FIELDS,
    LEGACY_GUARD_FIELDS,
    TrainConfig,
    make_config,
)
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
    """A run never overwrites another: an existing path is bad input, and so is one under a file."""
    if path.exists():
        raise EigenguardError(f"run directory '{path}' already exists; choose another --out or remove it")
    blocking = file_above(path)
    if blocking is not None:
        raise EigenguardError(f"run directory '{path}' is under '{blocking}', a file; allowed: a new directory")


def check_output_dir(path: Path, option: str) -> None:
    """Refuse, before any work, an output directory that cannot be one: a file at its path or above it."""
    blocking = path if path.exists() and not path.is_dir() else file_above(path)
    if blocking is not None:
        where = "is a file" if blocking == path else f"is under '{blocking}', a file"
        raise EigenguardError(f"{option} '{path}' {where}; allowed: a directory (existing or new)")


def file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is not a directory (nothing can be written below it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_resumable_run_dir(path: Path) -> None:
    """A run to resume: its directory exists, holds its config, and has not finished."""
    if not (path / "config.yaml").is_file():
        raise EigenguardError(f"'{path}' is not a run directory (no config.yaml); nothing to resume")
    if (path / "metrics.json").is_file():
        raise EigenguardError(f"run '{path}' has finished (metrics.json is written); there is nothing to resume")


def check_same_split(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """A resumed run must draw the same data as the interrupted one: its split must equal the saved one."""
    try:
        saved = load_file(str(path / "split.safetensors"))
    except (OSError, SafetensorError) as e:
        raise EigenguardError(f"'{path}/split.safetensors' is unreadable ({e}); the run cannot be resumed") from None
    if saved.keys() != tensors.keys() or any(not torch.equal(saved[k], v.cpu()) for k, v in tensors.items()):
        raise EigenguardError(
            f"run '{path}': this config's data split differs from the one saved when the run started; "
            "it cannot be resumed (was the dataset or the config changed?)"
        )


LOCK = ".lock"
STATE = "state.json"


def read_log(path: Path) -> list[dict[str, str]] | None:
    """A run directory's log.csv as rows of text (the fields a row lacks are ''), None without one."""
    log = path / "log.csv"
    if not log.is_file():
        return None
    with log.open(newline="") as f:
        return list(csv.DictReader(f))


def run_status(path: Path) -> dict[str, Any]:
    """What a run directory says about itself: state (running, interrupted, failed, finished, or unknown for
    a directory without state.json: runs of eigenguard before 0.3), its error, its progress (the fit and
    epoch of its last checkpoint), ACC / ASR when finished. A run recorded as running whose process is gone
    (killed, or its machine restarted) is interrupted."""
    status: dict[str, Any] = {"path": str(path), "state": "unknown", "error": None, "progress": None}
    try:
        record = json.loads((path / STATE).read_text())
        status["state"], status["error"] = record.get("state", "unknown"), record.get("error")
        if status["state"] == "running" and not owner_alive(f"{record.get('host')}:{record.get('pid')}"):
            status["state"], status["error"] = "interrupted", "its process is gone (killed?)"
    except (OSError, ValueError, AttributeError):
        pass
    if (path / "metrics.json").is_file():
        status["state"] = "finished"
        try:
            metrics = json.loads((path / "metrics.json").read_text())
            status["acc"], status["asr"] = metrics.get("acc"), metrics.get("asr")
        except (OSError, ValueError):
            status["error"] = "metrics.json is unreadable"
    manifests = sorted((path / "checkpoint").glob("fit-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if manifests:
        try:
            last = json.loads(manifests[-1].read_text())
            status["progress"] = {"fit": last["fit"], "epoch": last["epoch"], "epochs": last["epochs"]}
        except (OSError, ValueError, KeyError, TypeError):
            status["progress"] = None
    return status


def owner_alive(owner: str | None) -> bool:
    """Whether the process `host:pid` may still be running: False only where it is this host's and gone
    (or no owner was recorded); another machine's is assumed alive."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirectory:
    """Writes one run's files. Create it only after all input has been validated and loaded.

    resume=True reopens an interrupted run's directory instead of creating one. Either way the directory is
    locked (`.lock`: host and pid of the process writing it) until `close`; a second process is refused,
    a lock whose process is gone (same host) is taken over."""

    def __init__(self, path: Path, resume: bool = False) -> None:
        if resume:
            check_resumable_run_dir(path)
        else:
            check_new_run_dir(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
            except FileExistsError:
                raise EigenguardError(f"run directory '{path}' already exists; choose another --out") from None
        self.path = path
        self._lock()
        self._log_rows: list[dict[str, Any]] = []

    def _lock(self) -> None:
        lock, owner = self.path / LOCK, f"{socket.gethostname()}:{os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            except FileExistsError:
                holder = lock.read_text().strip() if lock.is_file() else ""
                if owner_alive(holder):
                    raise EigenguardError(f"run '{self.path}' is in use by process {holder} (its {LOCK})") from None
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(owner + "\n")
            return
        raise EigenguardError(f"run '{self.path}': could not take its {LOCK}")

    def close(self) -> None:
        (self.path / LOCK).unlink(missing_ok=True)

    def set_state(self, state: str, error: str | None = None) -> None:
        """state.json: running | interrupted (Ctrl-C, SIGTERM) | failed (with its error) | finished."""
        record = {"state": state, "error": error, "pid": os.getpid(), "host": socket.gethostname()}
        atomic_write_text(self.path / STATE, json.dumps(record) + "\n")

    def set_log(self, rows: list[dict[str, Any]]) -> None:
        """Replace the log (a resumed run's rows up to its checkpoint) and rewrite log.csv."""
        self._log_rows = [dict(row) for row in rows]
        if rows:
            self._write_log()

    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))

    def append_log(self, row: Mapping[str, Any]) -> None:
        """Add an epoch row and rewrite log.csv whole (atomic; a few KB even for 100 epochs).

        Rows of different phases may carry different fields: the header is every field seen, in order of
        first appearance, and a row leaves the fields it lacks empty.
        """
        self._log_rows.append(dict(row))
        self._write_log()

    def _write_log(self) -> None:
        fields = list(dict.fromkeys(k for r in self._log_rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._log_rows)
        atomic_write_text(self.path / "log.csv", buffer.getvalue())

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """metrics.json, strict JSON: a non-finite number (an accuracy over no images) is written as null."""
        atomic_write_text(
            self.path / "metrics.json", json.dumps(finite(dict(metrics)), indent=2, allow_nan=False) + "\n"
        )

    def save_model(self, state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> None:
        atomic_save_tensors(self.path / "model.safetensors", state_dict, {"config": json.dumps(dict(config))})

    def write_set_aside(self, rows: list[list[Any]]) -> None:
        """set_aside.csv: the training images the defense set aside, a header row then one row each."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        atomic_write_text(self.path / "set_aside.csv", buffer.getvalue())

    def save_split(self, tensors: Mapping[str, torch.Tensor]) -> None:
        atomic_save_tensors(self.path / "split.safetensors", tensors, {})


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float inside it (dicts, lists) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


# -- configs of older versions, where they are read back -----------------------------------------

# which defenses took which of the old guard fields
LEGACY_GUARD_USERS = {"eigenguard": tuple(LEGACY_GUARD_FIELDS), "dimension-edit": ("guard_at",)}


def stored_config(values: dict[str, Any]) -> TrainConfig:
    """A config read back from a run directory, a results store or an export, in today's layout (a config
    a user writes is read in today's layout only: `make_config`)."""
    return make_config(upgrade_legacy(values))


def upgrade_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """A config written before components owned their options (eigenguard 0.1: `attack_options`,
    `defense_options`, `k`, `guard_at`, ...) in today's layout; the old guard fields of a run whose defense
    did not use them are dropped (they were recorded at their defaults and never read)."""
    if not any(key in values for key in LEGACY_FIELDS):
        return _upgrade_guard_anchors(values)
    values = dict(values)
    attack_options = values.pop("attack_options", None) or {}
    defense_options = values.pop("defense_options", None) or {}
    guard_values = {key: values.pop(key) for key in LEGACY_GUARD_FIELDS if key in values}
    for field, given in (("attack", attack_options), ("defense", defense_options)):
        if not isinstance(given, dict):
            raise EigenguardError(f"invalid {field}_options = {given!r}: must be a mapping of option: value")
    defense_options = dict(defense_options)
    attack = values.get("attack", "badnets")
    if isinstance(attack, str) and attack.lower() != ATTACK_NONE:
        values["attack"] = {"name": attack, **{k: v for k, v in attack_options.items() if k != "cache_dir"}}
    defense = values.get("defense", DEFENSE_NONE)
    if isinstance(defense, str):
        for key in LEGACY_GUARD_USERS.get(defense.lower(), ()):
            if key in guard_values:
                defense_options.setdefault(LEGACY_GUARD_FIELDS[key], guard_values[key])
        values["defense"] = {"name": defense, **defense_options}
    return _upgrade_guard_anchors(values)


def _upgrade_guard_anchors(values: dict[str, Any]) -> dict[str, Any]:
    """EigenGuard's `lowest_loss_samples: N` (eigenguard 0.2) is `anchor_count: N` now (`anchors: none` for
    N = 0), since `anchors` chooses how they are picked."""
    defense = values.get("defense")
    if not (isinstance(defense, dict) and str(defense.get("name", "")).lower() == "eigenguard"):
        return values
    if "lowest_loss_samples" not in defense:
        return values
    defense = dict(defense)
    count = defense.pop("lowest_loss_samples")
    if count == 0:
        defense.setdefault("anchors", "none")
    else:
        defense.setdefault("anchor_count", count)
    return {**values, "defense": defense}
