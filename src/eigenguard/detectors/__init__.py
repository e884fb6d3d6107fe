"""Detectors: rank a training set's images by how suspicious they are (`eigenguard scan`), with no clean
data. Adding one = one file with a `Detector` subclass + one `DETECTORS` entry below.

- ss: Spectral Signatures, outliers along each class's top feature direction;
- ac: Activation Clustering, a small cluster of its own inside a class;
- abl: ABL's isolation, the lowest losses under local gradient ascent;
- d-br: D-BR's sample distinguishment, the features a rotation and shift move most;
- sieve: the guard's refusals (this project's own), the images a guarded model contradicts or finds unlike
  any class, in the class it names as the target;
- inversion: trigger inversion (this project's own), the class a small universal perturbation reaches from
  every other, and its images that already carry what the perturbation adds to the features;
- spectre: SPECTRE, robust whitening and quantum-entropy outlier scores (the strongest of these published
  without clean data; ASSET, SCAn, Beatrix and Confusion Training all use a trusted set).
Each owns its options (`eigenguard list`).
"""

from typing import Any

from eigenguard.detectors.activation_clustering import ActivationClustering
from eigenguard.detectors.base import Detection, DetectionContext, Detector
from eigenguard.detectors.inversion import TriggerInversion
from eigenguard.detectors.loss_isolation import LossIsolation
from eigenguard.detectors.refusals import GuardRefusals
from eigenguard.detectors.sensitivity import TransformationSensitivity
from eigenguard.detectors.spectral import SpectralSignatureDetector
from eigenguard.detectors.spectre import Spectre
from eigenguard.registry import Registry

DETECTORS: Registry[type[Detector]] = Registry("detector")
for _cls in (
    SpectralSignatureDetector, ActivationClustering, LossIsolation, TransformationSensitivity, GuardRefusals, Spectre,
    TriggerInversion,
):  # fmt: skip
    DETECTORS.register(_cls.name)(_cls)


def create_detector(name: str, **options: Any) -> Detector:
    """Build a registered detector; unknown options or bad values are one EigenguardError."""
    return DETECTORS.create(name, **options)


__all__ = ["DETECTORS", "Detection", "DetectionContext", "Detector", "create_detector"]
