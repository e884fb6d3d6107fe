"""Run configuration: one validated object, built from a profile, a YAML file and CLI flags.

Precedence, lowest to highest: the profile's values < the YAML file < flags given on the command line.
Every field has a one-line meaning below; `eigenguard train --help` shows the same.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eigenguard.errors import EigenguardError

# The profiles. `paper` is Section 4.1 of the paper (ResNet-18, SGD lr 0.1, momentum 0.9, batch 256,
# 100 epochs, 10% poison, 90/10 train/defense split); the paper names no schedule or weight decay, we use
# cosine decay and 5e-4 (the usual CIFAR values). `quick` is sized to finish in about ten minutes on two
# CPU cores and still plant a working backdoor: a quarter-width ResNet-18, 20k training images, 12 epochs
# (at 4 epochs BadNets had reached only 8% ASR, at 10 epochs 97%: random crops often cut the 3x3 corner
# trigger off, so the backdoor is learned after the clean task).
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        "model": "resnet18",
        "width": 1.0,
        "epochs": 100,
        "batch_size": 256,
        "lr": 0.1,
        "sgd_momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "warmup_epochs": 0.0,
        "train_subset": None,
    },
    "quick": {
        "dataset": "fashion-mnist",
        "model": "resnet18",
        "width": 0.25,
        "epochs": 12,
        "batch_size": 256,
        "lr": 0.1,
        "sgd_momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "warmup_epochs": 0.5,
        "train_subset": 20000,
        "eval_batch_size": 256,  # CPU: large eval batches are slower (1024: 5.2 s vs 256: 3.2 s on 10k images)
    },
}

ATTACK_NONE = "none"
DEFENSE_NONE = "none"


class TrainConfig(BaseModel):
    """Everything that decides a training run. Unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    profile: str = Field("paper", description="named defaults: " + ", ".join(PROFILES))
    # data
    dataset: str = Field("cifar10", description="dataset name")
    data_root: str | None = Field(None, description="where datasets live (default: $EIGENGUARD_DATA)")
    download: bool = Field(False, description="fetch a missing dataset with torchvision")
    image_size: int = Field(32, description="side length images are resized to (imagefolder only)")
    train_subset: int | None = Field(None, description="use only this many training images (None: all)")
    defense_fraction: float = Field(0.1, description="share of the training set held back for defenses")
    # model
    model: str = Field("resnet18", description="model name")
    width: float = Field(1.0, description="channel-width multiplier")
    # attack
    attack: str = Field("badnets", description="attack name, or 'none' for a clean run")
    poison_rate: float | None = Field(
        None,
        description="poisoned fraction, in [0, 1]: of the training set (dirty-label attacks) or of the target "
        "class (clean-label: sig, clb); None: the attack's paper value (10%; 80% for sig and clb)",
    )
    target: int = Field(0, description="all-to-one target class")
    attack_options: dict[str, Any] = Field(default_factory=dict, description="extra attack arguments")
    # defense
    defense: str = Field(DEFENSE_NONE, description="defense: none, eigenguard, ft, anp, abl, ss, fp, nad")
    defense_options: dict[str, Any] = Field(default_factory=dict, description="extra defense arguments")
    clean_samples: int = Field(
        500, description="the defender's clean images, drawn from the defense split (paper: 500)"
    )
    # EigenGuard (used when defense = eigenguard; see guard/module.py for what each choice means)
    guard_at: str = Field("stage1", description="insertion point of the guard")
    k: int = Field(20, description="EigenGuard: number of top singular directions flattened to one scale")
    momentum: float = Field(0.7, description="EigenGuard: momentum of the history buffer His")
    history_init: Literal["first", "zeros"] = Field("first", description="EigenGuard: His before step one")
    guard_grad: Literal["constant", "full"] = Field("constant", description="EigenGuard: backward mode")
    guard_precision: Literal["float32", "float64"] = Field("float32", description="EigenGuard: eigh dtype")
    lowest_loss_samples: int = Field(
        100, description="EigenGuard: lowest-loss training samples added to the decomposition (paper: 100)"
    )
    # optimisation
    epochs: int = Field(100, description="training epochs")
    batch_size: int = Field(256, description="training batch size")
    lr: float = Field(0.1, description="peak SGD learning rate")
    sgd_momentum: float = Field(0.9, description="SGD momentum (Nesterov off)")
    weight_decay: float = Field(5e-4, description="SGD weight decay")
    schedule: Literal["cosine", "multistep", "constant"] = Field("cosine", description="lr schedule")
    warmup_epochs: float = Field(0.0, description="linear lr warm-up length, in epochs")
    augment: bool = Field(True, description="random crop (pad 4) and, where the dataset allows, flip")
    flip: bool | None = Field(None, description="horizontal flip; None: dataset default")
    # execution
    seed: int = Field(0, description="master seed: split, poison choice, trigger, init, batches")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    compile: bool = Field(False, description="torch.compile the model")
    eval_batch_size: int = Field(512, description="batch size for evaluation")
    eval_every: int = Field(1, description="evaluate every N epochs (the last epoch always)")
    out: str | None = Field(None, description="run directory (must not exist; default: runs/<name>)")
    runs_dir: str = Field("runs", description="parent of auto-named run directories")
    cache_dir: str | None = Field(
        None, description="reusable artifacts (backdoored models, CLB images); default $EIGENGUARD_CACHE"
    )

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"unknown profile; allowed: {', '.join(PROFILES)}")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        from eigenguard.data import DATASETS

        if v.lower() not in DATASETS:
            raise ValueError(f"unknown dataset; allowed: {', '.join(DATASETS.names())}")
        return v.lower()

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        from eigenguard.models import MODELS

        if v.lower() not in MODELS:
            raise ValueError(f"unknown model; allowed: {', '.join(MODELS.names())}")
        return v.lower()

    @field_validator("attack")
    @classmethod
    def _attack(cls, v: str) -> str:
        from eigenguard.attacks import ATTACKS

        if v.lower() != ATTACK_NONE and v.lower() not in ATTACKS:
            raise ValueError(f"unknown attack; allowed: {', '.join([ATTACK_NONE, *ATTACKS.names()])}")
        return v.lower()

    @field_validator("defense")
    @classmethod
    def _defense(cls, v: str) -> str:
        from eigenguard.defenses import DEFENSES

        if v.lower() not in DEFENSES:
            raise ValueError(f"unknown defense; allowed: {', '.join(DEFENSES.names())}")
        return v.lower()

    @field_validator("lowest_loss_samples", "clean_samples")
    @classmethod
    def _lowest_loss(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("poison_rate")
    @classmethod
    def _rate(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError("must be in [0, 1]")
        return v

    @field_validator("defense_fraction")
    @classmethod
    def _defense_fraction(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("epochs", "batch_size", "eval_batch_size", "image_size", "eval_every", "k")
    @classmethod
    def _positive_int(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("train_subset")
    @classmethod
    def _subset(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("must be >= 1 or null")
        return v

    @field_validator("width", "lr")
    @classmethod
    def _positive_float(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("sgd_momentum", "momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("weight_decay", "warmup_epochs")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("target", "seed")
    @classmethod
    def _non_negative_int(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be >= 0")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.lower()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("allowed: auto, cpu, cuda, cuda:N")

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.attack == ATTACK_NONE:
            # A clean run: nothing to poison. Keep the record honest rather than silently ignoring it.
            object.__setattr__(self, "poison_rate", 0.0)
        elif self.poison_rate is None:
            from eigenguard.attacks import ATTACKS

            object.__setattr__(self, "poison_rate", ATTACKS.get(self.attack).default_rate)
        return self

    @model_validator(mode="after")
    def _guard_point(self) -> "TrainConfig":
        if self.defense in ("eigenguard", "dimension-edit"):  # both put a module at guard_at
            from eigenguard.models import MODELS

            points = MODELS.get(self.model)(in_channels=1, num_classes=2, width=0.0625).insertion_points
            if self.guard_at not in points:
                raise ValueError(
                    f"guard_at '{self.guard_at}' is not an insertion point of {self.model}; "
                    f"allowed: {', '.join(points)}"
                )
        return self

    def run_name(self) -> str:
        attack = self.attack if self.attack == ATTACK_NONE else f"{self.attack}{self.poison_rate:g}"
        return f"{self.dataset}_{self.model}_{attack}_{self.defense}_s{self.seed}"


def format_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as one line: the field, the bad value, what is allowed."""
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(TrainConfig.model_fields)
        return f"unknown option '{field}'; allowed: {allowed}"
    msg = str(first["msg"]).removeprefix("Value error, ")
    return f"invalid {field} = {first.get('input')!r}: {msg}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; a missing or malformed file is an EigenguardError."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise EigenguardError(f"cannot read config file '{p}': {e.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EigenguardError(f"config file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise EigenguardError(f"config file '{p}' must hold a mapping of option: value, got {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def resolve_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Merge profile < file < overrides into a validated TrainConfig (EigenguardError on bad input)."""
    file_values = dict(file_values or {})
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    profile = overrides.get("profile", file_values.get("profile", "paper"))
    if profile not in PROFILES:
        raise EigenguardError(f"invalid profile = {profile!r}: unknown profile; allowed: {', '.join(PROFILES)}")
    merged = {**PROFILES[profile], **file_values, **overrides, "profile": profile}
    try:
        return TrainConfig(**merged)
    except ValidationError as e:
        raise EigenguardError(format_validation_error(e)) from None
