"""Defenses. Adding one = one file with a `Defense` subclass + one `DEFENSES` entry below.

Training-time: none, eigenguard, abl, asd (10 clean seeds per class), d-st (no clean data), pdb (no clean
data: plants a defensive backdoor of its own), sieve (no clean data: the guard's refusals find the poisons,
then a plain model trains on the rest), cbd (no clean data: an early-stopped backdoored model down-weights
what it fits), ss (ss reads the backdoored model's features, then retrains), inversion (no clean data:
the inversion detector's split of the backdoored model's training set, then retrains).
Post-training, repairing the cached backdoored model: ft, anp, fp, nad, clp (data-free), d-br (no clean
data: finds the poisons by their features' sensitivity). Each declares what it needs (`needs_clean_pool`,
`needs_backdoored`: base.py) and owns its options (`eigenguard list`).
Analysis (Figure 1 of the paper, not a defense): dimension-edit.
Presets: `recommended` names the defense and options this project recommends (docs/results/clean-model.md).
"""

from typing import Any

from eigenguard.defenses.abl import ABL
from eigenguard.defenses.anp import ANP
from eigenguard.defenses.asd import ASD
from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.defenses.cbd import CBD
from eigenguard.defenses.clp import CLP
from eigenguard.defenses.dbr import DBR
from eigenguard.defenses.dimension_edit import DimensionEditTraining
from eigenguard.defenses.dst import DST
from eigenguard.defenses.eigenguard import EigenGuardDefense
from eigenguard.defenses.fine_pruning import FinePruning
from eigenguard.defenses.finetune import FineTuning
from eigenguard.defenses.inversion import InversionRetraining
from eigenguard.defenses.nad import NAD
from eigenguard.defenses.no_defense import NoDefense
from eigenguard.defenses.pdb import PDB
from eigenguard.defenses.sieve import Sieve
from eigenguard.defenses.spectral_signatures import SpectralSignatures
from eigenguard.registry import Registry

DEFENSES: Registry[type[Defense]] = Registry("defense")
for _cls in (
    NoDefense, EigenGuardDefense, FineTuning, ANP, ABL, SpectralSignatures, FinePruning, NAD, CLP, DBR, DST, ASD,
    PDB, Sieve, CBD, InversionRetraining, DimensionEditTraining,
):  # fmt: skip
    DEFENSES.register(_cls.name)(_cls)


# A preset is a defense's name with options fixed; resolve() expands it and a user's options go on top.
PRESETS: dict[str, dict[str, Any]] = {
    "recommended": {"name": "inversion", "along": "principal", "confirm": "any"},
}


def defense_options(name: str) -> dict[str, Any]:
    """The options a defense accepts (`defense: {name: ..., KEY: VALUE}`, `--set defense.KEY=VALUE`), with
    their defaults."""
    return DEFENSES.options(name)


def create_defense(name: str, **options: Any) -> Defense:
    """Build a registered defense; unknown options or bad values are one EigenguardError."""
    return DEFENSES.create(name, **options)


__all__ = ["DEFENSES", "PRESETS", "Defense", "DefenseContext", "create_defense", "defense_options"]
