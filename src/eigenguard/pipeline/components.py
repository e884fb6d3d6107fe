"""Check a config against what exists: dataset, model, attack and defense names, and the components'
options, completed with their defaults, before anything runs.

`resolve(config)` is the first thing `train` does, and what `eigenguard bench` applies to every grid cell
when a grid is loaded, so a typo fails before any training. The config it returns is explicit: every
attack and defense option at its value (`{name: ft}` becomes `{name: ft, epochs: 10, lr: 0.01, ...}`) and
the poison rate filled in from the attack's paper value and the defender's hold-out from the dataset and
the defense (`defense_fraction`), so two spellings of one setting are one cell, one
cache entry and one config.yaml.
"""

import functools
from typing import Any

from eigenguard.attacks import ATTACKS
from eigenguard.config import ATTACK_NONE, DETECTOR_NONE, PAPER_DEFENSE_FRACTION, Component, TrainConfig, make_config
from eigenguard.data import DATASETS
from eigenguard.defenses import DEFENSES, PRESETS, Defense
from eigenguard.detectors import DETECTORS
from eigenguard.errors import EigenguardError
from eigenguard.models import MODELS, create_model


def resolve(config: TrainConfig) -> TrainConfig:
    """`config` with its names checked and its components' options complete (EigenguardError otherwise)."""
    for field, registry in (("dataset", DATASETS), ("model", MODELS)):
        value = getattr(config, field)
        if value not in registry:
            raise EigenguardError(f"invalid {field} = {value!r}: unknown {field}; allowed: {', '.join(registry)}")
    updates: dict[str, Any] = {}
    attack = config.attack
    if attack.name != ATTACK_NONE:
        if attack.name not in ATTACKS:
            allowed = ", ".join([ATTACK_NONE, *ATTACKS.names()])
            raise EigenguardError(f"invalid attack = {attack.name!r}: unknown attack; allowed: {allowed}")
        options = ATTACKS.complete(attack.name, attack.options)
        updates["attack"] = Component(name=attack.name, **options)
        if config.poison_rate is None:
            updates["poison_rate"] = ATTACKS.get(attack.name).default_rate
    defense = config.defense
    if defense.name in PRESETS:
        preset = dict(PRESETS[defense.name])
        defense = Component(name=preset.pop("name"), **{**preset, **defense.options})
    if defense.name not in DEFENSES:
        allowed = ", ".join([*DEFENSES.names(), *PRESETS])
        raise EigenguardError(f"invalid defense = {defense.name!r}: unknown defense; allowed: {allowed}")
    updates["defense"] = Component(name=defense.name, **DEFENSES.complete(defense.name, defense.options))
    instance = DEFENSES.create(defense.name, **updates["defense"].options)  # the defense's own checks
    if config.defense_fraction is None:  # a user's own images are held back only for a defense that needs them
        own = config.dataset == "imagefolder" and not instance.needs_clean_pool
        updates["defense_fraction"] = 0.0 if own else PAPER_DEFENSE_FRACTION
    detector = config.detector
    if detector.name != DETECTOR_NONE:
        if detector.name not in DETECTORS:
            allowed = ", ".join([DETECTOR_NONE, *DETECTORS.names()])
            raise EigenguardError(f"invalid detector = {detector.name!r}: unknown detector; allowed: {allowed}")
        updates["detector"] = Component(name=detector.name, **DETECTORS.complete(detector.name, detector.options))
    resolved = make_config({**config.model_dump(), **{k: _dump(v) for k, v in updates.items()}})
    instance.check(resolved, insertion_points(resolved.model))
    return resolved


@functools.cache
def insertion_points(model_name: str) -> tuple[str, ...]:
    """A model's insertion points, read once per model from a tiny instance (a grid resolves every cell)."""
    return create_model(model_name, in_channels=1, num_classes=2, width=0.0625).insertion_points


def build_defense(config: TrainConfig) -> Defense:
    """The config's defense, built from its options."""
    return DEFENSES.create(config.defense.name, **config.defense.options)


def _dump(value: Any) -> Any:
    return value.model_dump() if isinstance(value, Component) else value
