"""A finished run directory, loaded back: its config, its trained model, its test set and its attack.

The model is rebuilt from config.yaml (architecture, width, and the structure a defense adds, such as
EigenGuard at its insertion point) and filled from model.safetensors (no pickle). A config.yaml of
eigenguard 0.1 (flat `attack_options`, `k`, `guard_at`, ...) loads too (run_directory.stored_config).
Nothing is retrained and the training set is not poisoned again: the analyses need only the clean test
images and the trigger.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from eigenguard.attacks import Attack, create_attack
from eigenguard.config import ATTACK_NONE, TrainConfig
from eigenguard.data import load_dataset
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize
from eigenguard.errors import EigenguardError
from eigenguard.models import Backbone
from eigenguard.pipeline.predict import rebuilt_model
from eigenguard.run_directory import stored_config
from eigenguard.training.features import features


@dataclass
class LoadedRun:
    path: Path
    config: TrainConfig
    model: Backbone
    test: ImageDataset
    attack: Attack | None
    normalize: Normalize
    device: torch.device

    @property
    def name(self) -> str:
        return self.config.run_name()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", data_root: str | None = None) -> LoadedRun:
    path = Path(run_dir)
    for needed in ("config.yaml", "model.safetensors"):
        if not (path / needed).is_file():
            raise EigenguardError(f"'{path}' is not a finished run directory: {needed} is missing")
    try:
        values = yaml.safe_load((path / "config.yaml").read_text())
        config = stored_config({**values, **({"data_root": data_root} if data_root else {})})
    except EigenguardError as e:
        raise EigenguardError(f"{path}/config.yaml: {e}") from None
    device = torch.device(device)
    try:  # the run's own files first: a broken one is named before any dataset is looked for
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, SafetensorError) as e:
        raise EigenguardError(f"{path}/model.safetensors is unreadable ({e}); is the run complete?") from None
    _, test = load_dataset(config.dataset, config.data_root, config.download, config.image_size)
    test = test.to(device)
    model = rebuilt_model(config, weights, test.image_shape[0], test.num_classes, path).to(device).eval()
    attack = None
    if config.attack.name != ATTACK_NONE:
        options = config.attack.options
        attack = create_attack(config.attack.name, test.image_shape, target=config.target, seed=config.seed, **options)
    return LoadedRun(path, config, model, test, attack, Normalize(test.mean, test.std, device), device)


def clean_and_triggered(run: LoadedRun, samples: int) -> tuple[ImageDataset, ImageDataset]:
    """The first `samples` test images the backdoor would flip, clean and with the trigger (same images,
    same order; labels: their true classes for both)."""
    if run.attack is None:
        raise EigenguardError(f"run '{run.path}' has no attack (attack: none): there is nothing to trigger")
    wanted = run.attack.backdoor_labels(run.test.labels, run.test.num_classes)
    keep = torch.nonzero(wanted != run.test.labels).flatten()[:samples]
    clean = run.test.subset(keep)
    triggered = ImageDataset(run.attack.apply(clean.images), clean.labels, clean.classes, clean.mean, clean.std)
    return clean, triggered


def poisoned_share(run: LoadedRun) -> float | None:
    """The share of the run's training images that were poisoned: metrics.json's poisoned_images over
    train_images, what training saw. Not config.poison_rate, which for CLB and SIG counts a share of the
    target class (CLB's working setting: 1.0 of class 0, 10% of the training set). Without metrics.json,
    the configured rate (None: unset)."""
    metrics = run.path / "metrics.json"
    if metrics.is_file():
        values = json.loads(metrics.read_text())
        if values.get("train_images"):
            return values["poisoned_images"] / values["train_images"]
    return run.config.poison_rate


def poison_step(n: int, rate: float | None) -> int:
    """Every how many of n images one is triggered so that a `rate` share of them is, spread evenly as the
    poisons among a training batch's images (n, i.e. only the first, when the rate is 0 or unset)."""
    return max(1, round(1 / rate)) if rate else n


@torch.no_grad()
def features_at(
    run: LoadedRun, images: torch.Tensor, point: str, batch_size: int = 256, through_point: bool = True
) -> torch.Tensor:
    """Flattened activations at insertion point `point` (after any module placed there; before it with
    `through_point=False`), float64, (N, D).

    A guarded model runs in its default per-sample inference: each image's features do not depend on the
    others in its batch."""
    out = features(run.model, images, point, run.normalize, batch_size=batch_size, through_point=through_point)
    return out.double().cpu()
