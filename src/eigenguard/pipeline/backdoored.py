"""The backdoored no-defense model that post-training defenses repair: trained once per setting, then reused.

A cache entry is a complete no-defense run directory (config.yaml, log.csv, metrics.json,
model.safetensors, split.safetensors) under <cache>/backdoored/, named by a key that hashes everything
that decides the trained weights (cache.py's mechanism):
- the training recipe: `config.plain_weights_values`, every field but those that cannot change the
  weights of a run without a defense (where output goes, how often to evaluate, the defense itself);
- the poisoned training set itself (its fingerprint), which covers dataset, subset, split, attack, its
  options and poison rate;
- the device type (CPU and CUDA kernels differ in the last bits).
Any change gives another key, so a stale model is never served. Every finished no-defense run stores
itself (copied under a temporary name, then renamed into place, only if the entry is still missing), and
a defense whose entry is missing runs that no-defense run first, holding the entry's lock (cache.filling),
so a second defense process that needs it waits and reuses it. A plain no-defense run takes no lock (it
trains anyway); if it races another to store the entry, the first rename wins and the other copy is dropped.
"""

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from eigenguard.cache import cache_root, digest, filling, fingerprint
from eigenguard.config import TrainConfig, no_defense, plain_weights_values
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.errors import EigenguardError

Train = Callable[[TrainConfig, bool], Any]  # runs a config to completion, resuming it if asked (pipeline.run.train)


def backdoored_entry(config: TrainConfig, train_set: ImageDataset, device: torch.device) -> Path:
    """Where the no-defense model of `config` lives: named by what decides its weights (config.py's
    `plain_weights_values`), the poisoned training set's fingerprint and the device type."""
    key = digest({**plain_weights_values(config), "device": device.type}, fingerprint(train_set))
    return cache_root(config.cache_dir) / "backdoored" / f"{no_defense(config).run_name()}_{key}"


def load_or_train_backdoored(
    config: TrainConfig, entry: Path, device: torch.device, model: nn.Module, train: Train
) -> tuple[nn.Module, dict[str, Any], bool]:
    """Fill `model` (a fresh model of the config's architecture) with the weights cached at `entry`
    (`backdoored_entry` of this config).

    Returns (model, the no-defense run's metrics, whether it came from the cache). Trains it first when
    the entry is missing, with `train` (an ordinary run of the no-defense config).
    """
    with filling(entry):  # another process filling the same entry: wait for it, then use its model
        hit = (entry / "metrics.json").exists()
        if not hit:
            # an ordinary no-defense run; when it finishes it stores itself in the cache (store_plain_run).
            # Its directory is the entry's own: a process killed while training it leaves it to be resumed
            # by the next one that needs the entry (under the same lock); a run that failed is removed.
            scratch = entry.parent / f".training.{entry.name}"
            run_dir = scratch / "run"
            resume = (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.json").is_file()
            if scratch.exists() and not resume:
                shutil.rmtree(scratch)
            scratch.mkdir(exist_ok=True)
            try:
                train(no_defense(config).model_copy(update={"out": str(run_dir)}), resume)
            except Exception:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
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
