"""CLB, the label-consistent attack (Turner et al., 2019): adversarially hardened target images + a trigger.

Clean-label poisons keep their (correct) target label, so a model can classify them from their content and
ignore the trigger. Turner et al. first make them hard to classify: an L-inf PGD perturbation (epsilon =
16/255, as in the paper) against a model the attacker trained on clean data removes the content's
evidence, and the model has to lean on the trigger instead. Then the trigger is stamped on: a 3x3
checkerboard in all four corners (right-hand corners [[0,0,255],[0,255,0],[255,0,255]], left-hand corners
its horizontal mirror), so a random crop rarely removes all of it. Default rate: the paper's 80% of the
target class. At test time the four-corner trigger alone (no perturbation) is stamped on non-target images.

Our choices, where Turner et al. and the paper leave them open:
- The surrogate is a model of our own zoo, trained by the attacker on the clean training set it was
  handed (`poison`'s input): by default a quarter-width ResNet-18, 6 epochs of SGD (lr 0.1, momentum 0.9,
  wd 5e-4, cosine, batch 256, random crop, no flip: `surrogate_recipe`, trained by training/fit.py).
  `surrogate_training` picks how:
  "adversarial" (default, as Turner et al.): Madry et al.'s PGD adversarial training at
  `surrogate_epsilon` with `surrogate_pgd_steps` (default 3) steps and a random start, which costs about
  steps + 2 forward passes per batch. A robust model's adversarial directions carry class semantics, so its
  perturbations really erase the target-class evidence. The default surrogate_epsilon is half the attack's
  epsilon, Turner et al.'s ratio (a model trained at 8/255, perturbations of 16/255): a surrogate trained
  at the attack's own epsilon resists its PGD, so the perturbed images keep their class evidence.
  "standard": plain training; its perturbations are high-frequency noise that a freshly trained victim
  does not inherit, so the attack fails with it (docs/results/quick-profile.md).
- PGD: 10 steps of size 2.5 * epsilon / steps (Madry et al.'s rule), from the clean image, untargeted
  (raise the loss of the true label), on the [0, 255] scale so the budget holds after rounding to uint8.
  With epsilon 0 or pgd_steps 0 nothing is perturbed (the trigger alone on clean target images, the
  ablation of the hardening): no surrogate is trained, and its recipe leaves the cache key.
- The trained surrogate is cached too (clb/surrogate-<key>.safetensors, keyed by the training set, the seed
  and the surrogate recipe), so a sweep over the PGD's steps or step size, or over epsilon with
  surrogate_epsilon fixed, trains it once. While it trains it checkpoints after every epoch beside that
  entry (clb/.training.surrogate-<key>/, training/checkpoint.py): a process killed then leaves it to the
  next one that needs the entry, which continues from the last epoch (the same weights as an
  uninterrupted training); the folder goes once the entry is stored.
- The perturbed images are expensive, so all target-class images are perturbed once and cached on disk
  (safetensors) under a key hashing the training images and labels, the target, every PGD and surrogate
  parameter, the seed and the device type (CPU and CUDA kernels differ in the last bits). Any change of
  these gives a new key, hence a new file; a hit skips the surrogate and PGD entirely.
  Cache directory: clb/ under the run's cache directory (cache.py), else $EIGENGUARD_CACHE, else
  ~/.cache/eigenguard.
"""

import json
import shutil
import time
from pathlib import Path
from typing import Literal

import torch

from eigenguard.attacks.badnets import CHECKERBOARD, corner_patch
from eigenguard.attacks.base import Attack
from eigenguard.attacks.pgd import adversarial_training_loss, pgd_linf
from eigenguard.cache import cache_root, cached_tensors, digest, fingerprint
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize
from eigenguard.errors import EigenguardError
from eigenguard.models import MODELS, create_model
from eigenguard.options import component, option
from eigenguard.training.checkpoint import Checkpoints
from eigenguard.training.evaluate import accuracy
from eigenguard.training.fit import Fit, Recipe

CACHE_FORMAT = 1  # bump when the cached computation changes in a way the key does not capture


@component
class CleanLabel(Attack):
    name = "clb"
    clean_label = True
    default_rate = 0.8

    epsilon: float = option(16 / 255, "L-inf budget of the PGD perturbation, on [0, 1] pixels", "[0, 1]")
    pgd_steps: int = option(10, "PGD steps against the surrogate (0: no perturbation)", ">= 0")
    pgd_step_size: float | None = option(None, "PGD step size (null: 2.5 epsilon / pgd_steps)", "[0, 1]")
    surrogate_model: str = option("resnet18", "architecture of the attacker's surrogate (a registered model)")
    surrogate_width: float = option(0.25, "width multiplier of the surrogate", "[0.01, 16]")
    surrogate_epochs: int = option(6, "epochs the surrogate trains", ">= 1")
    surrogate_training: Literal["adversarial", "standard"] = option("adversarial", "how the surrogate trains")
    surrogate_epsilon: float | None = option(
        None, "L-inf budget of the surrogate's adversarial training (null: epsilon / 2)", "[0, 1]"
    )
    surrogate_pgd_steps: int = option(3, "PGD steps of the surrogate's adversarial training", ">= 1")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.surrogate_model not in MODELS:
            allowed = ", ".join(MODELS.names())
            raise EigenguardError(
                f"invalid option surrogate_model = {self.surrogate_model!r} for attack 'clb'; allowed: {allowed}"
            )
        if self.surrogate_epsilon is None:
            self.surrogate_epsilon = self.epsilon / 2
        if self.pgd_step_size is None:
            self.pgd_step_size = 2.5 * self.epsilon / max(self.pgd_steps, 1)
        self.surrogate: dict[str, object] = {  # what the cache key and metrics.json record
            "model": self.surrogate_model,
            "width": self.surrogate_width,
            "epochs": self.surrogate_epochs,
            "training": self.surrogate_training,
        }
        if self.surrogate_training == "adversarial":
            self.surrogate |= {"epsilon": self.surrogate_epsilon, "pgd_steps": self.surrogate_pgd_steps}
        self.cache_folder = cache_root(self.cache_dir) / "clb"
        self.cache_hit: bool | None = None  # set by poison(): whether the perturbed images came from the cache
        self.cache_file: Path | None = None
        self.surrogate_report: dict[str, float] = {}

        patch = torch.tensor(CHECKERBOARD, dtype=torch.uint8)
        self.pattern = torch.zeros(self.image_shape, dtype=torch.uint8)
        self.mask = torch.zeros(self.image_shape, dtype=torch.bool)
        for corner in ("tl", "tr", "bl", "br"):
            p, m = corner_patch(self.image_shape, patch if corner[1] == "r" else patch.flip(1), corner)
            self.pattern = torch.where(m, p, self.pattern)
            self.mask |= m

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask.to(images.device), self.pattern.to(images.device), images)

    def parameters(self) -> dict[str, object]:
        """Everything that decides the perturbed images, besides the data itself."""
        return {
            "format": CACHE_FORMAT,
            "target": self.target,
            "seed": self.seed,
            "epsilon": self.epsilon,
            "pgd_steps": self.pgd_steps,
            "pgd_step_size": self.pgd_step_size,
            "surrogate": self.surrogate if self.perturbs else None,
        }

    @property
    def perturbs(self) -> bool:
        """Whether PGD changes the target images at all (epsilon 0 or 0 steps: the images stay clean)."""
        return self.epsilon > 0 and self.pgd_steps > 0

    def cache_key(self, train: ImageDataset, parameters: dict[str, object] | None = None) -> str:
        """A hash of `parameters` (default: everything that decides the perturbed images), the device type
        and the training set."""
        values = {**(parameters or self.parameters()), "device": train.images.device.type}
        return digest(values, fingerprint(train), length=32)

    def perturbed_target_images(self, train: ImageDataset) -> torch.Tensor:
        """PGD versions of every target-class image of `train`, in index order, from the cache if present."""
        self.cache_file = self.cache_folder / f"clb-{self.cache_key(train)}.safetensors"

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
            images = self._perturb(train)
            metadata = {"parameters": json.dumps(self.parameters(), sort_keys=True)}
            return {"images": images, "report": _tensor_of(self.surrogate_report)}, metadata

        stored, self.cache_hit = cached_tensors(self.cache_file, compute)
        if self.cache_hit:
            self.surrogate_report = _json_of(stored["report"])
        return stored["images"].to(train.images.device)

    def _perturb(self, train: ImageDataset) -> torch.Tensor:
        pool = torch.nonzero(train.labels == self.target).flatten()
        if not self.perturbs:
            return train.images[pool].clone()
        model, normalize = self._surrogate(train)
        images = pgd_linf(
            model,
            train.images[pool],
            train.labels[pool],
            normalize,
            epsilon=self.epsilon,
            steps=self.pgd_steps,
            step_size=self.pgd_step_size,
        )
        # how well the hardening worked: the surrogate's accuracy on the target images, before and after PGD
        for key, batch in (("surrogate_acc_target_clean", train.images[pool]), ("surrogate_acc_target_pgd", images)):
            targets = ImageDataset(batch, train.labels[pool], train.classes, train.mean, train.std)
            self.surrogate_report[key] = round(accuracy(model, targets, normalize, 512), 4)
        return images

    def poison_images(self, train: ImageDataset, chosen: torch.Tensor) -> torch.Tensor:
        pool = torch.nonzero(train.labels == self.target).flatten()
        perturbed = self.perturbed_target_images(train)
        return self.apply(perturbed[torch.searchsorted(pool, chosen)])

    def _surrogate(self, train: ImageDataset) -> tuple[torch.nn.Module, Normalize]:
        """The trained surrogate, from <cache>/clb/surrogate-<key>.safetensors when this training set, seed and
        surrogate recipe were seen before (a sweep over the PGD settings trains it once)."""
        parameters = {"format": CACHE_FORMAT, "seed": self.seed, "surrogate": self.surrogate}
        path = self.cache_folder / f"surrogate-{self.cache_key(train, parameters)}.safetensors"
        normalize = Normalize(train.mean, train.std, train.images.device)
        trained: list[torch.nn.Module] = []

        scratch = path.parent / f".training.{path.stem}"

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
            started = time.perf_counter()
            trained.append(self._train_surrogate(train, normalize, scratch))
            self.surrogate_report["surrogate_seconds"] = round(time.perf_counter() - started, 1)
            return {**trained[0].state_dict(), "__report__": _tensor_of(self.surrogate_report)}, {}

        stored, hit = cached_tensors(path, compute, device=train.images.device)
        shutil.rmtree(scratch, ignore_errors=True)  # the entry is stored: its epoch checkpoints are redundant
        if not hit:
            self.surrogate_report["surrogate_cache_hit"] = False
            return trained[0], normalize
        report = _json_of(stored.pop("__report__"))
        model = self._surrogate_architecture(train)
        model.load_state_dict(stored)
        self.surrogate_report = {**report, "surrogate_cache_hit": True}
        return model, normalize

    def _surrogate_architecture(self, train: ImageDataset) -> torch.nn.Module:
        """A fresh surrogate model (initialised from the global RNG) on the training set's device."""
        return create_model(
            self.surrogate_model,
            in_channels=train.image_shape[0],
            num_classes=train.num_classes,
            width=self.surrogate_width,
        ).to(train.images.device)

    def _train_surrogate(self, train: ImageDataset, normalize: Normalize, scratch: Path) -> torch.nn.Module:
        """Train the surrogate, checkpointing every epoch under `scratch` (continued from there if an earlier
        process was killed while training it)."""
        device = train.images.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed + 7)
            model = self._surrogate_architecture(train)
        generator = torch.Generator(device=device).manual_seed(self.seed + 8)
        loss_fn = None
        if self.surrogate_training == "adversarial":
            loss_fn = adversarial_training_loss(
                model, normalize, epsilon=self.surrogate_epsilon, steps=self.surrogate_pgd_steps, generator=generator
            )
        recipe, checkpoints = self.surrogate_recipe(), Checkpoints(scratch)
        run = Fit(model, train.images, train.labels, recipe, normalize=normalize, generator=generator, loss_fn=loss_fn)
        log: list[dict[str, object]] = []
        try:
            saved = checkpoints.load("surrogate", device)
        except EigenguardError:  # a checkpoint cut short by a crash, or an older format: train from the start
            shutil.rmtree(scratch, ignore_errors=True)
            saved = None
        if saved is not None:
            run.resume(saved, model=model, generators={})
            log = list(saved.record["log"])
        while not run.finished:
            stats = run.epoch()
            log.append({"epoch": run.done, "train_acc": round(stats["train_acc"], 4)})
            self.say(
                f"clean-label surrogate {run.done:>3}/{recipe.epochs}  loss {stats['train_loss']:.4f}  "
                f"train acc {stats['train_acc']:.1%}"
            )
            scratch.mkdir(parents=True, exist_ok=True)
            run.save(checkpoints, "surrogate", model=model, generators={}, record={"log": log})
        self.surrogate_report = {"surrogate_train_acc": log[-1]["train_acc"]}  # type: ignore[dict-item]
        return model

    def surrogate_recipe(self) -> Recipe:
        """The attacker's recipe: SGD lr 0.1, momentum 0.9, wd 5e-4, cosine, batch 256, crop, no flip."""
        return Recipe(epochs=self.surrogate_epochs, batch_size=256, flip=False)

    def describe(self) -> dict[str, object]:
        # the surrogate's options are recorded as the one dict its cache key reads, and only when it is used
        return {
            **self.run_record(),
            "epsilon": self.epsilon,
            "pgd_steps": self.pgd_steps,
            "pgd_step_size": self.pgd_step_size,
            "surrogate": self.surrogate if self.perturbs else None,
            "cache_file": None if self.cache_file is None else str(self.cache_file),
            "cache_hit": self.cache_hit,
            **self.surrogate_report,
        }


def _tensor_of(report: dict[str, object]) -> torch.Tensor:
    """A JSON-able dict as a uint8 tensor, to store beside the tensors of a cache file."""
    return torch.frombuffer(bytearray(json.dumps(report).encode()), dtype=torch.uint8)


def _json_of(stored: torch.Tensor) -> dict[str, object]:
    return json.loads(stored.cpu().numpy().tobytes().decode())
