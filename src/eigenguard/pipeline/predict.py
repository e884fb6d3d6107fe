"""A trained run, ready to use: `load_model(run_dir)` and `predict` on image files, no dataset loaded.

    model = eigenguard.load_model("runs/shop_resnet18_none_sieve_s0")
    model.classes, model(images_uint8)              # logits; normalisation is inside
    predict(model, [Path("new/a.png")])             # [(file, class, confidence)]

The model is the run's architecture with whatever its defense put in it (EigenGuard with its frozen
history, PDB's input stamp and label map), filled from model.safetensors (no pickle), in eval mode: a
guard filters each image alone against its history (the per-sample protocol), so a prediction does not
depend on which other images share its batch. What it takes (classes, image shape, normalisation) comes
from the run's metrics.json; a run written before that was recorded reads it from its dataset once.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.data import load_dataset
from eigenguard.data.decode import decode_image, open_image
from eigenguard.data.image_folder import IMAGE_EXTENSIONS
from eigenguard.data.sources import one_line
from eigenguard.data.transforms import Normalize
from eigenguard.errors import EigenguardError
from eigenguard.models import Backbone, create_model
from eigenguard.pipeline.components import build_defense
from eigenguard.pipeline.run import data_description, resolve_device
from eigenguard.run_directory import stored_config

RESIZING_DATASETS = frozenset({"imagefolder", "gtsrb"})  # their loaders resize every image to image_size


class TrainedModel(nn.Module):
    """A run's model with its normalisation: uint8 images (N, C, H, W) in, logits out."""

    def __init__(self, backbone: Backbone, classes: list[str], image_shape: tuple[int, int, int],
                 normalize: Normalize, resizes: bool) -> None:  # fmt: skip
        super().__init__()
        self.backbone, self.classes, self.image_shape, self.resizes = backbone, classes, image_shape, resizes
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(images))


def rebuilt_model(
    config: TrainConfig, weights: dict[str, torch.Tensor], in_channels: int, num_classes: int, path: Path
) -> Backbone:
    """The run's architecture with the structure its defense adds, filled with `weights` (its
    model.safetensors, from run directory `path`); weights that do not fit are one EigenguardError."""
    model = create_model(config.model, in_channels=in_channels, num_classes=num_classes, width=config.width)
    build_defense(config).rebuild(model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise EigenguardError(
            f"{path}/model.safetensors does not fit its config.yaml: {str(e).splitlines()[0]}"
        ) from None
    return model


def load_model(run_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """The finished run at `run_dir` as a ready model (module docstring); a directory that is not a
    finished run, or files that do not fit each other, are one EigenguardError."""
    path = Path(run_dir)
    for needed in ("config.yaml", "model.safetensors", "metrics.json"):
        if not (path / needed).is_file():
            raise EigenguardError(f"'{path}' is not a finished run directory: {needed} is missing")
    try:
        config = stored_config(yaml.safe_load((path / "config.yaml").read_text()))
        metrics = json.loads((path / "metrics.json").read_text())
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, SafetensorError, yaml.YAMLError, ValueError) as e:
        raise EigenguardError(f"'{path}' holds an unreadable run file: {one_line(e)}") from None
    except EigenguardError as e:
        raise EigenguardError(f"{path}/config.yaml: {e}") from None
    described = (metrics.get("data") or {}) if isinstance(metrics, dict) else {}
    if "classes" not in described:  # a run from before the description was recorded
        _, test = load_dataset(config.dataset, config.data_root, config.download, config.image_size)
        described = data_description(test)
    torch_device = resolve_device(device)
    shape = tuple(described["image_shape"])
    backbone = rebuilt_model(config, weights, shape[0], len(described["classes"]), path)
    normalize = Normalize(tuple(described["mean"]), tuple(described["std"]), torch_device)
    model = TrainedModel(backbone, list(described["classes"]), shape, normalize, config.dataset in RESIZING_DATASETS)
    return model.to(torch_device).eval()


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named, and those under the folders named (sorted); anything else is one error."""
    files: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise EigenguardError(f"no image files under '{given}'; allowed: {', '.join(sorted(IMAGE_EXTENSIONS))}")
            files += found
        elif given.is_file():
            files.append(given)
        else:
            raise EigenguardError(f"'{given}' does not exist; give image files or folders of them")
    return files


def load_image(path: Path, model: TrainedModel) -> np.ndarray:
    """One file as the model's input (C, H, W) uint8: resized where the model's dataset resized, else it
    must have the model's size and channels."""
    channels, height, width = model.image_shape
    if model.resizes:
        return decode_image(path, height).transpose(2, 0, 1)
    image, bands = open_image(path, "L" if channels == 1 else "RGB")
    size, pixels = image.size, np.asarray(image, dtype=np.uint8)
    kind = "grey" if channels == 1 else "colour"
    if size != (width, height) or (channels == 1 and bands not in (1, 2)):
        got = f"{size[0]}x{size[1]} with {bands} band{'s' * (bands > 1)}"
        raise EigenguardError(f"image {path} is {got}; this model takes {width}x{height} {kind} images")
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


@torch.no_grad()
def predict(model: TrainedModel, files: Sequence[Path], batch_size: int = 256) -> list[dict[str, Any]]:
    """Each file's class and the model's confidence in it (softmax), in order; every file is read and
    checked before any is classified."""
    images = torch.from_numpy(np.stack([load_image(p, model) for p in files])) if files else None
    rows: list[dict[str, Any]] = []
    if images is None:
        return rows
    device = next(model.parameters()).device
    for start in range(0, len(images), batch_size):
        probabilities = model(images[start : start + batch_size].to(device)).float().softmax(dim=1).cpu()
        confidence, label = probabilities.max(dim=1)
        for i, (c, p) in enumerate(zip(label.tolist(), confidence.tolist(), strict=True)):
            rows.append({"file": str(files[start + i]), "class": model.classes[c], "confidence": round(p, 4)})
    return rows
