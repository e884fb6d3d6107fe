"""Everything a run loads before it writes anything: data, split, poisons, test sets, the defender's pool.

Seeds: one master seed, one stream per purpose, so changing e.g. the model does not change which samples
are poisoned: split = seed, poison choice = seed + 1, trigger = seed, the defender's clean images = seed + 4
(weights = seed + 2 and batches = seed + 3 belong to the trainer).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eigenguard.attacks import Attack, create_attack
from eigenguard.attacks.base import quiet
from eigenguard.cache import fingerprint
from eigenguard.config import ATTACK_NONE, TrainConfig
from eigenguard.data import data_dir, load_dataset
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.image_folder import image_folder_files
from eigenguard.data.split import DefenseSplit, defense_split
from eigenguard.data.transforms import Normalize
from eigenguard.errors import EigenguardError

# Flipping a digit or a traffic sign changes its meaning; these datasets train without it.
NO_FLIP_DATASETS = frozenset({"mnist", "gtsrb"})


@dataclass
class PreparedData:
    """The run's data, on the training device. Indices are into `train_set` unless said otherwise."""

    train_set: ImageDataset  # the victim's training set, poisoned
    test: ImageDataset
    asr_set: ImageDataset | None
    clean_pool: ImageDataset  # the defender's clean images, drawn from the held-back defense split
    split: DefenseSplit
    clean_indices: torch.Tensor  # into the original training set
    attack: Attack | None
    normalize: Normalize
    flip: bool
    source: dict[str, str] = field(default_factory=dict)  # the directory read and the data's content hashes
    poison_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    cross_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    def split_record(self) -> dict[str, torch.Tensor]:
        """What split.safetensors holds: every index set, into the original training set."""
        return {
            "train_indices": self.split.train,
            "defense_indices": self.split.defense,
            # the samples that were poisoned
            "poison_indices": self.split.train[self.poison_indices],
            # samples the attack modified without the backdoor (WaNet's noise mode)
            "cross_indices": self.split.train[self.cross_indices],
            # the defender's clean images (a subset of defense_indices)
            "clean_indices": self.clean_indices,
        }


def prepare_data(
    config: TrainConfig, device: torch.device, needs_clean_pool: bool = True, say: Callable[[str], None] = quiet
) -> PreparedData:
    """Load and poison the data. A defense that `needs_clean_pool` gets all `clean_samples` or an error;
    otherwise the pool is cut to what the defense split holds (it is recorded, never used). `say` gets the
    progress lines of an attack that trains before it poisons."""
    train_full, test = load_dataset(config.dataset, config.data_root, config.download, config.image_size)
    source = {
        "dir": data_dir(config.dataset, config.data_root),
        "train_sha256": fingerprint(train_full),
        "test_sha256": fingerprint(test),
    }
    assert config.defense_fraction is not None  # filled in by components.resolve
    split = defense_split(len(train_full), config.defense_fraction, config.seed, config.train_subset)
    if needs_clean_pool and config.clean_samples > len(split.defense):
        raise EigenguardError(
            f"clean_samples {config.clean_samples} is more than the {len(split.defense)} images of the defense "
            f"split; allowed: 0..{len(split.defense)} (or raise defense_fraction)"
        )
    order = torch.randperm(len(split.defense), generator=torch.Generator().manual_seed(config.seed + 4))
    clean_indices = split.defense[order[: config.clean_samples]].sort().values
    train_set = train_full.subset(split.train).to(device)
    clean_pool = train_full.subset(clean_indices).to(device)
    test = test.to(device)
    flip = config.flip if config.flip is not None else config.dataset not in NO_FLIP_DATASETS
    normalize = Normalize(train_set.mean, train_set.std, device)
    if config.attack.name == ATTACK_NONE:
        return PreparedData(train_set, test, None, clean_pool, split, clean_indices, None, normalize, flip, source)

    attack = create_attack(
        config.attack.name,
        train_set.image_shape,
        target=config.target,
        seed=config.seed,
        cache_dir=config.cache_dir,
        **config.attack.options,
    )
    attack.say = say
    assert config.poison_rate is not None  # filled in by components.resolve
    poisoned = attack.poison(train_set, config.poison_rate, torch.Generator().manual_seed(config.seed + 1))
    return PreparedData(
        poisoned.dataset,
        test,
        attack.asr_test_set(test),
        clean_pool,
        split,
        clean_indices,
        attack,
        normalize,
        flip,
        source,
        poisoned.poison_indices.cpu(),
        poisoned.cross_indices.cpu(),
    )


def training_files(config: TrainConfig, data: PreparedData, rows: torch.Tensor | None = None) -> list[Path] | None:
    """The files of the training images at `rows` (indices into train_set; default every one) of a user's
    image folder, checked against the loader's labels where no planted attack changed them; None for a
    benchmark dataset, which has no files."""
    if config.dataset != "imagefolder":
        return None
    rows = torch.arange(len(data.train_set)) if rows is None else rows.cpu()
    own = data.train_set.labels.cpu()[rows] if config.attack.name == ATTACK_NONE else None
    return image_folder_files(config.data_root, data.split.train.cpu()[rows], own)
