"""Backdoor attacks. Adding one = one file with an `Attack` subclass + one `ATTACKS` entry below."""

from eigenguard.attacks.adap_blend import AdapBlend
from eigenguard.attacks.adap_patch import AdapPatch
from eigenguard.attacks.badnets import BadNets, BadNetsAllToAll
from eigenguard.attacks.base import Attack, PoisonedTrainingSet
from eigenguard.attacks.blend import Blend
from eigenguard.attacks.bpp import BppAttack
from eigenguard.attacks.clean_label import CleanLabel
from eigenguard.attacks.input_aware import InputAware
from eigenguard.attacks.multi_trigger import MultiTrigger
from eigenguard.attacks.sig import SIG
from eigenguard.attacks.wanet import WaNet
from eigenguard.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack")
for _cls in (
    BadNets,
    BadNetsAllToAll,
    Blend,
    SIG,
    CleanLabel,
    WaNet,
    MultiTrigger,
    BppAttack,
    AdapBlend,
    AdapPatch,
    InputAware,
):
    ATTACKS.register(_cls.name)(_cls)


def attack_options(name: str) -> dict[str, object]:
    """The options an attack owns (`attack: {name: ..., KEY: VALUE}`), with their defaults."""
    return ATTACKS.options(name)


def create_attack(
    name: str,
    image_shape: tuple[int, int, int],
    *,
    target: int = 0,
    seed: int = 0,
    cache_dir: str | None = None,
    **options: object,
) -> Attack:
    """Build a registered attack for images of `image_shape` (C, H, W), given the run's target class, seed
    and cache root (where CLB and Input-aware keep what they train); unknown options are an error."""
    return ATTACKS.create(name, image_shape, fixed={"target": target, "seed": seed, "cache_dir": cache_dir}, **options)


__all__ = [
    "ATTACKS",
    "SIG",
    "AdapBlend",
    "AdapPatch",
    "Attack",
    "BadNets",
    "BadNetsAllToAll",
    "Blend",
    "BppAttack",
    "CleanLabel",
    "InputAware",
    "MultiTrigger",
    "PoisonedTrainingSet",
    "WaNet",
    "attack_options",
    "create_attack",
]
