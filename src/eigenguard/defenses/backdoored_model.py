"""The backdoored no-defense model that post-training defenses repair: trained once per setting, then reused.

A cache entry is a complete no-defense run directory (config.yaml, log.csv, metrics.json,
model.safetensors, split.safetensors) under <cache>/backdoored/, named by a key that hashes everything
that decides the trained weights:
- the training recipe: every config field except those that cannot change the weights (where output goes,
  how often to evaluate, the defense's own settings, where the data lives);
- the poisoned training set itself (a hash of its images and labels), which covers dataset, subset,
  split, attack, its options and poison rate;
- the device type (CPU and CUDA kernels differ in the last bits).
Any change gives another key, so a stale model is never served. Every finished no-defense run stores
itself (copied under a temporary name, then renamed into place, only if the entry is still missing), and
a defense whose entry is missing runs that no-defense run first, holding the entry's lock (cache.filling),
so a second defense process that needs it waits and reuses it. A plain no-defense run takes no lock (it
trains anyway); if it races another to store the entry, the first rename wins and the other copy is dropped.
"""

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from eigenguard.cache import cache_root, filling
from eigenguard.config import DEFENSE_NONE, TrainConfig
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.errors import EigenguardError

# The defense's own settings, and the fields that say where things go or how often to measure:
# none of them can change the trained no-defense weights.
DEFENSE_FIELDS = (
    "defense",
    "defense_options",
    "clean_samples",
    "guard_at",
    "k",
    "momentum",
    "history_init",
    "guard_grad",
    "guard_precision",
    "lowest_loss_samples",
)
# `device` too: "auto" and "cpu" name the same machine; the resolved device type is hashed separately.
IRRELEVANT = (
    *DEFENSE_FIELDS, "out", "runs_dir", "eval_every", "eval_batch_size", "data_root", "download", "cache_dir", "device"
)  # fmt: skip


def no_defense_config(config: TrainConfig) -> TrainConfig:
    """The same run without a defense: the defense's own fields back at their defaults, no output path."""
    values = config.model_dump()
    for name in DEFENSE_FIELDS:
        values[name] = TrainConfig.model_fields[name].get_default(call_default_factory=True)
    values["defense"] = DEFENSE_NONE
    values["out"] = None
    return TrainConfig(**values)


def backdoored_key(config: TrainConfig, train_set: ImageDataset, device: torch.device) -> str:
    recipe = {k: v for k, v in config.model_dump().items() if k not in IRRELEVANT}
    h = hashlib.sha256(json.dumps({**recipe, "device": device.type}, sort_keys=True, default=str).encode())
    h.update(train_set.images.cpu().contiguous().numpy().tobytes())
    h.update(train_set.labels.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def backdoored_entry(config: TrainConfig, train_set: ImageDataset, device: torch.device) -> Path:
    base = no_defense_config(config)
    return (
        cache_root(config.cache_dir) / "backdoored" / f"{base.run_name()}_{backdoored_key(config, train_set, device)}"
    )


def load_or_train_backdoored(
    config: TrainConfig, entry: Path, device: torch.device, model: nn.Module, *, progress: bool = False
) -> tuple[nn.Module, dict[str, Any], bool]:
    """Fill `model` (a fresh model of the config's architecture) with the weights cached at `entry`
    (`backdoored_entry` of this config).

    Returns (model, the no-defense run's metrics, whether it came from the cache). Trains it first when
    the entry is missing.
    """
    from eigenguard.training.pipeline import train  # the no-defense run is an ordinary run

    with filling(entry):  # another process filling the same entry: wait for it, then use its model
        hit = (entry / "metrics.json").exists()
        if not hit:
            scratch = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".training."))
            try:  # an ordinary no-defense run; when it finishes it stores itself in the cache (store_plain_run)
                train(no_defense_config(config).model_copy(update={"out": str(scratch / "run")}), progress=progress)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            if not (entry / "metrics.json").exists():
                raise EigenguardError(f"the no-defense run did not store itself at {entry}: its key differs (a bug)")
    state = load_file(str(entry / "model.safetensors"), device=str(device))
    model.load_state_dict(state)
    metrics = json.loads((entry / "metrics.json").read_text())
    metrics["cache_entry"] = str(entry)
    return model, metrics, hit


def store_plain_run(entry: Path, run_dir: Path) -> bool:
    """Copy a finished no-defense run into the cache, so later post-training defenses reuse it.

    Does nothing (returns False) when the entry exists. The copy is made under a temporary name and renamed.
    """
    if entry.exists():  # entries only ever appear whole, by the rename below
        return False
    entry.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    try:
        shutil.copytree(run_dir, scratch / "run")
        (scratch / "run").rename(entry)
    except OSError:
        if not (entry / "metrics.json").exists():  # not a lost race with another process: a real failure
            raise
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return True


def cached_plain_metrics(entry: Path) -> dict[str, Any] | None:
    """The no-defense run's metrics if it is in the cache (for cost ratios), without training it."""
    path = entry / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None
