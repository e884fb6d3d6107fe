"""Backdoor attacks. Adding one = one file with an `Attack` subclass + one `ATTACKS` entry below."""

from eigenguard.attacks.badnets import BadNets
from eigenguard.attacks.base import Attack, PoisonedTrainingSet
from eigenguard.attacks.blend import Blend
from eigenguard.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")
ATTACKS.register("badnets")(BadNets)
ATTACKS.register("blend")(Blend)


def create_attack(
    name: str, image_shape: tuple[int, int, int], *, target: int = 0, seed: int = 0, **options: object
) -> Attack:
    """Build a registered attack for images of `image_shape` (C, H, W)."""
    return ATTACKS.get(name)(image_shape, target=target, seed=seed, **options)


__all__ = ["ATTACKS", "Attack", "BadNets", "Blend", "PoisonedTrainingSet", "create_attack"]
