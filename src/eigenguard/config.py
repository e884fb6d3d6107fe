"""The run configuration: one validated object that means the same in Python, in a YAML file and on the CLI.

This module is the bottom of the package: it imports nothing of eigenguard but its error type, so every
other module may use it. It knows the *shape* of a configuration, not which datasets, models, attacks or
defenses exist: names and component options are checked against the registries by
`eigenguard.pipeline.components.resolve`, which `train`, `eigenguard bench` and the CLI call first.

    TrainConfig(profile="quick", attack="blend", defense={"name": "eigenguard", "k": 40})

- A profile (`paper`, `quick`) is a set of defaults applied when the object is built, in Python exactly as
  in YAML or with `--profile`: every value given explicitly wins over the profile's.
- The attack, the defense and the detector are components: a name plus that component's own options,
  `{name: eigenguard, k: 40}` (a bare name means the component's defaults). `eigenguard list` prints every
  component's options; on the command line `--set defense.k=40` sets one. A run with a detector is a scan.
- What decides a result is stated once: the fields `Experiment` declares. `Placement` declares where and
  how a run runs (device, paths, checkpoint cadence); `TrainConfig` is both, flat. Grid cell keys and the
  caches of trained weights hash `result_values` (the Experiment fields; keys add `KEY_VERSION`), nothing else.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from eigenguard.errors import EigenguardError

# The profiles. `paper` is Section 4.1 of the paper (ResNet-18, SGD lr 0.1, momentum 0.9, batch 256,
# 100 epochs, 10% poison, 90/10 train/defense split); the paper names no schedule or weight decay, we use
# cosine decay and 5e-4 (the usual CIFAR values). `quick` is sized to finish in about five minutes on two
# CPU cores and still plant a working backdoor: a quarter-width ResNet-18, 20k training images, 12 epochs
# (random crops often cut the 3x3 corner trigger off, so the backdoor is learned after the clean task).
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
        "eval_batch_size": 256,  # on a CPU, larger evaluation batches are slower
    },
}
DEFAULT_PROFILE = "paper"

ATTACK_NONE = "none"
DEFENSE_NONE = "none"
DETECTOR_NONE = "none"
PAPER_DEFENSE_FRACTION = 0.1  # Section 4.1: 90/10 train/defense split


def _component_mapping(value: Any) -> Any:
    """A bare name becomes {name: ...}; a mapping gets its keys spelled with underscores; else unchanged."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    return value


class Component(BaseModel):
    """An attack or a defense: its registered name and its own options (`{name: ft, epochs: 5}`).

    A bare string is shorthand for the name with every option at its default. Options are checked, and
    completed with their defaults, against the component's constructor by `pipeline.components.resolve`.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return _component_mapping(value)

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# What an old (flat) config said, and where it lives now: the guard's fields became EigenGuard's options.
LEGACY_GUARD_FIELDS = {
    "guard_at": "at",
    "k": "k",
    "momentum": "momentum",
    "history_init": "history_init",
    "guard_grad": "grad",
    "guard_precision": "precision",
    "lowest_loss_samples": "lowest_loss_samples",
}
LEGACY_FIELDS = ("attack_options", "defense_options", *LEGACY_GUARD_FIELDS)
MAX_WIDTH = 16.0  # a ResNet-18 at width 16 has about 2.8 billion weights
MAX_IMAGE_SIZE = 1024


class Experiment(BaseModel):
    """What decides a run's result: data, model, attack, defense, recipe, seed and what is measured. A grid
    cell's key and every cache of trained weights hash these fields (`result_values`), and only these."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    profile: str = Field(DEFAULT_PROFILE, description="named defaults, applied first: " + ", ".join(PROFILES))
    # data
    dataset: str = Field("cifar10", description="dataset name (eigenguard list)")
    image_size: int = Field(32, description="side length images are resized to (imagefolder, gtsrb)")
    train_subset: int | None = Field(None, description="use only this many training images (None: all)")
    defense_fraction: float | None = Field(
        None,
        description="share of the training set held back for the defender's clean images; None: 10% (the "
        "paper's split) on benchmark datasets and for a defense that needs clean images, else 0 (own images)",
    )
    # model
    model: str = Field("resnet18", description="model name (eigenguard list)")
    width: float = Field(1.0, description="channel-width multiplier")
    # attack
    attack: Component = Field(
        Component(name="badnets"), description="the attack and its options, e.g. {name: blend, alpha: 0.2}; none"
    )
    poison_rate: float | None = Field(
        None,
        description="poisoned fraction, in [0, 1]: of the training set (dirty-label attacks) or of the target "
        "class (clean-label: sig, clb); None: the attack's paper value (10%; 80% for sig and clb)",
    )
    target: int = Field(0, description="all-to-one target class")
    # defense
    defense: Component = Field(
        Component(name=DEFENSE_NONE), description="the defense and its options, e.g. {name: eigenguard, k: 20}"
    )
    clean_samples: int = Field(
        500, description="the defender's clean images, drawn from the defense split (paper: 500)"
    )
    # detection
    detector: Component = Field(
        Component(name=DETECTOR_NONE),
        description="a detector ranking the training set, e.g. {name: ss} (eigenguard scan); none: a training run",
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
    seed: int = Field(0, description="master seed: split, poison choice, trigger, init, batches")
    compile: bool = Field(False, description="torch.compile the model")  # compiled kernels may round differently
    # measurement (a defense may read these: ABL ranks losses and Spectral Signatures reads features in batches)
    eval_batch_size: int = Field(512, description="batch size for evaluation")
    eval_every: int = Field(1, description="evaluate every N epochs (the last epoch always)")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, values: Any) -> Any:
        """The profile's values first, then everything given explicitly (Python, YAML and CLI alike)."""
        if not isinstance(values, dict):
            return values
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        if old := [key for key in LEGACY_FIELDS if key in values]:
            raise ValueError(
                f"'{old[0]}' is eigenguard 0.1's layout: write attack: {{name: NAME, KEY: VALUE}} and defense: "
                "{name: NAME, KEY: VALUE} (`eigenguard list` shows the options; 0.1's run directories still load)"
            )
        profile = values.get("profile", DEFAULT_PROFILE)
        values = {**PROFILES.get(profile, {}), **values}  # an unknown profile is reported by _profile
        if str(values.get("dataset", "")).lower() == "imagefolder":
            values.setdefault("attack", ATTACK_NONE)  # a user's own images: nothing planted unless asked
        return values

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"unknown profile; allowed: {', '.join(PROFILES)}")
        return v

    @field_validator("dataset", "model")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @field_validator("clean_samples")
    @classmethod
    def _clean_samples(cls, v: int) -> int:
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
    def _defense_fraction(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v

    @field_validator("epochs", "batch_size", "eval_batch_size", "image_size", "eval_every")
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

    @field_validator("width")
    @classmethod
    def _width(cls, v: float) -> float:
        if v > MAX_WIDTH:  # the weights grow with its square: beyond this no machine holds the model
            raise ValueError(f"must be <= {MAX_WIDTH:g}")
        return v

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: int) -> int:
        if v > MAX_IMAGE_SIZE:  # a resized dataset is held whole on the device
            raise ValueError(f"must be <= {MAX_IMAGE_SIZE}")
        return v

    @field_validator("sgd_momentum")
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

    @model_validator(mode="after")
    def _clean_run(self) -> "Experiment":
        if self.attack.name == ATTACK_NONE:
            # A clean run: nothing to poison. Keep the record honest rather than silently ignoring it.
            if self.attack.options:
                object.__setattr__(self, "attack", Component(name=ATTACK_NONE))
            object.__setattr__(self, "poison_rate", 0.0)
        return self


class Placement(BaseModel):
    """Where and how a run runs: which machine, where data is read and files are written, how often it
    checkpoints. None of these changes its result, so no key hashes them. (The device *type* can change the
    last bits: caches that hold weights add it to their key themselves.)"""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    data_root: str | None = Field(None, description="where datasets live (default: $EIGENGUARD_DATA)")
    download: bool = Field(False, description="fetch a missing dataset with torchvision")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="checkpoint a defense's own iteration loop (ANP's masks) every N iterations (0: every tenth "
        "of it); fits checkpoint at every epoch end",
    )
    out: str | None = Field(None, description="run directory (must not exist; default: runs/<name>)")
    runs_dir: str = Field("runs", description="parent of auto-named run directories")
    cache_dir: str | None = Field(
        None, description="reusable artifacts (backdoored models, CLB images); default $EIGENGUARD_CACHE"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.lower()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("allowed: auto, cpu, cuda, cuda:N")


class TrainConfig(Placement, Experiment):
    """A whole run configuration: an Experiment (what decides the result) and its Placement (where it runs),
    flat, as YAML files and the command line write it. Unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def run_name(self) -> str:
        """A readable name: dataset, model, attack and rate, defense, seed (not unique: see result_values)."""
        attack = self.attack.name
        if attack != ATTACK_NONE and self.poison_rate is not None:
            attack = f"{attack}{self.poison_rate:g}"
        step = f"scan-{self.detector.name}" if self.detector.name != DETECTOR_NONE else self.defense.name
        return f"{self.dataset}_{self.model}_{attack}_{step}_s{self.seed}"


# -- what decides a result: defined here, once -------------------------------------------------------
# Which definition a key was made with. Raise it whenever what `result_values` gives for a run changes (a
# field or an option added, a field moved between Experiment and Placement): stores and exported grids
# written under an older version are re-keyed from their recorded configs when read (bench/exchange.py).
KEY_VERSION = 9
EXPERIMENT_FIELDS = tuple(Experiment.model_fields)
PLACEMENT_FIELDS = tuple(Placement.model_fields)
# What a run measures and logs without touching the weights it trains, for a run without a defense.
MEASUREMENT_FIELDS = ("eval_every", "eval_batch_size")


def result_values(config: TrainConfig) -> dict[str, Any]:
    """Every value that can change what `train(config)` produces: a grid cell's identity (its key hashes
    these with KEY_VERSION) and, less what only measures, that of the caches of trained weights."""
    return config.model_dump(include=set(EXPERIMENT_FIELDS))


def no_defense(config: TrainConfig) -> TrainConfig:
    """The same run without a defense (or a detector): the backdoored model a post-training defense starts
    from and a scan reads."""
    values = config.model_dump()
    values.update(
        defense={"name": DEFENSE_NONE},
        detector={"name": DETECTOR_NONE},
        clean_samples=TrainConfig.model_fields["clean_samples"].default,
    )
    values["out"] = None
    return TrainConfig(**values)


def plain_weights_values(config: TrainConfig) -> dict[str, Any]:
    """Every value that can change the weights of the no-defense run of `config` (the backdoored-model
    cache's identity, besides the training set's fingerprint and the device type)."""
    values = result_values(no_defense(config))
    return {k: v for k, v in values.items() if k not in MEASUREMENT_FIELDS}


# -- reading and merging ----------------------------------------------------------------------------


def format_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as one line: the field, the bad value, what is allowed."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    field = ".".join(loc) or "config"
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(TrainConfig.model_fields)
        return f"unknown option '{field}'; allowed: {allowed}"
    if first["type"] == "missing" and loc and loc[-1] == "name":
        return f"{'.'.join(loc[:-1])} needs a name, e.g. {{name: badnets}}"
    msg = str(first["msg"]).removeprefix("Value error, ")
    if not loc:  # a check of the whole config (the old layout's conversion): its message says it all
        return msg
    return f"invalid {field} = {first.get('input')!r}: {msg}"


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from plain values; any problem is one EigenguardError naming the field."""
    try:
        return TrainConfig(**values)
    except ValidationError as e:
        raise EigenguardError(format_validation_error(e)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; a missing or malformed file is an EigenguardError."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise EigenguardError(f"cannot read config file '{p}': {e.strerror}") from None
    except UnicodeDecodeError:
        raise EigenguardError(f"config file '{p}' is not UTF-8 text; allowed: a YAML file") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EigenguardError(f"config file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if values is None:  # an empty file is a wrong path more often than a wish for the defaults
        raise EigenguardError(f"config file '{p}' is empty; allowed: a YAML mapping of option: value")
    if not isinstance(values, dict):
        raise EigenguardError(f"config file '{p}' must hold a mapping of option: value, got {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


COMPONENT_FIELDS = ("attack", "defense", "detector")


def component_dict(value: Any) -> dict[str, Any]:
    """A component as a plain mapping: a bare name becomes {name: ...}."""
    if isinstance(value, Component):
        return value.model_dump()
    mapping = _component_mapping(value)
    if not isinstance(mapping, dict):
        raise EigenguardError(f"invalid component {value!r}: expected a name or a mapping with a name")
    return mapping


def merge_settings(base: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` laid over `base`, both plain config values. Keys may be dotted (`defense.k`).

    A component given by name replaces the base's component when the name differs (another attack's
    options would not fit) and keeps the base's options when it is the same component.
    """
    merged = {str(k).replace("-", "_"): v for k, v in base.items()}
    for key, value in settings.items():
        key = str(key).replace("-", "_")
        head, dot, option = key.partition(".")
        if dot:
            if head not in COMPONENT_FIELDS:
                raise EigenguardError(
                    f"invalid setting '{key}': only {', '.join(COMPONENT_FIELDS)} have options (e.g. defense.k)"
                )
            if head not in merged:
                raise EigenguardError(f"invalid setting '{key}': name the {head} first (e.g. --{head} NAME)")
            merged[head] = {**component_dict(merged[head]), option: value}
        elif key in COMPONENT_FIELDS and key in merged:
            old, new = component_dict(merged[key]), component_dict(value)
            merged[key] = {**old, **new} if old.get("name") == new.get("name") else new
        else:
            merged[key] = value
    return merged


def config_value(config: TrainConfig | dict[str, Any], path: str) -> Any:
    """The value of a field or a component option (`defense.k`); a component field gives its name."""
    values = config.model_dump() if isinstance(config, TrainConfig) else config
    head, dot, option = path.partition(".")
    value = values.get(head)
    if dot:
        return value.get(option) if isinstance(value, dict) else None
    return value.get("name") if isinstance(value, dict) and "name" in value else value


def is_setting(path: str) -> bool:
    """Whether `path` names a config field or a component option (`defense.k`)."""
    head, dot, option = path.partition(".")
    return head in TrainConfig.model_fields and (not dot or (head in COMPONENT_FIELDS and bool(option)))
