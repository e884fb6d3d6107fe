"""Backdoor attacks. Adding one = one file with an `Attack` subclass + one `ATTACKS` entry below."""

from eigenguard.attacks.badnets import BadNets, BadNetsAllToAll
from eigenguard.attacks.base import Attack, PoisonedTrainingSet
from eigenguard.attacks.blend import Blend
from eigenguard.attacks.clean_label import CleanLabel
from eigenguard.attacks.multi_trigger import MultiTrigger
from eigenguard.attacks.sig import SIG
from eigenguard.attacks.wanet import WaNet
from eigenguard.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")
for _cls in (BadNets, BadNetsAllToAll, Blend, SIG, CleanLabel, WaNet, MultiTrigger):
    ATTACKS.register(_cls.name)(_cls)


ATTACK_ARGS = ("image_shape", "target", "seed")


def attack_options(name: str) -> dict[str, object]:
    """The extra options an attack accepts (beyond image_shape, target, seed), with their defaults."""
    return ATTACKS.options(name, ATTACK_ARGS)


def create_attack(
    name: str, image_shape: tuple[int, int, int], *, target: int = 0, seed: int = 0, **options: object
) -> Attack:
    """Build a registered attack for images of `image_shape` (C, H, W); unknown options are an error."""
    fixed = {"target": target, "seed": seed}
    return ATTACKS.create(name, image_shape, positional=ATTACK_ARGS, fixed=fixed, **options)


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
