"""Backdoor attacks. Adding one = one file with an `Attack` subclass + one `ATTACKS` entry below."""

import inspect

from eigenguard.attacks.badnets import BadNets, BadNetsAllToAll
from eigenguard.attacks.base import Attack, PoisonedTrainingSet
from eigenguard.attacks.blend import Blend
from eigenguard.attacks.clean_label import CleanLabel
from eigenguard.attacks.multi_trigger import MultiTrigger
from eigenguard.attacks.sig import SIG
from eigenguard.attacks.wanet import WaNet
from eigenguard.errors import EigenguardError
from eigenguard.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")
for _cls in (BadNets, BadNetsAllToAll, Blend, SIG, CleanLabel, WaNet, MultiTrigger):
    ATTACKS.register(_cls.name)(_cls)


def attack_options(name: str) -> dict[str, object]:
    """The extra options an attack accepts (beyond image_shape, target, seed), with their defaults."""
    params = inspect.signature(ATTACKS.get(name).__init__).parameters
    skip = {"self", "image_shape", "target", "seed"}
    return {k: p.default for k, p in params.items() if k not in skip}


def create_attack(
    name: str, image_shape: tuple[int, int, int], *, target: int = 0, seed: int = 0, **options: object
) -> Attack:
    """Build a registered attack for images of `image_shape` (C, H, W); unknown options are an error."""
    allowed = attack_options(name)
    for key in options:
        if key not in allowed:
            raise EigenguardError(
                f"unknown option '{key}' for attack '{name}'; allowed: {', '.join(allowed) or '(none)'}"
            )
    try:
        return ATTACKS.get(name)(image_shape, target=target, seed=seed, **options)
    except (TypeError, ValueError) as e:  # e.g. a string where a number belongs
        raise EigenguardError(f"invalid options {options} for attack '{name}': {e}") from None


__all__ = [
    "ATTACKS",
    "SIG",
    "Attack",
    "BadNets",
    "BadNetsAllToAll",
    "Blend",
    "CleanLabel",
    "MultiTrigger",
    "PoisonedTrainingSet",
    "WaNet",
    "attack_options",
    "create_attack",
]
