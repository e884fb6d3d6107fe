"""Spectral Signatures (Tran, Li & Madry, NeurIPS 2018) as a detector: outliers along a class's top
singular direction of the trained model's features.

For each class: centre its feature vectors (the model trained on the data, eval mode, the last stage's
output, flattened, as BackdoorBench reads them), take the top right singular vector v and score each
image by its squared projection <r_i - mean, v>^2. Tran et al. remove the 1.5 epsilon n_c highest of every
class (epsilon: the assumed poisoned fraction); that is the flagged set. The scores become robust
z-scores inside their class, so one ranking covers the whole set. No clean data.
"""

import torch

from eigenguard.detectors.base import Detection, DetectionContext, Detector, top_per_class, within_class_z
from eigenguard.options import component, option
from eigenguard.training.features import features


def top_direction(centred: torch.Tensor) -> torch.Tensor:
    """The top right singular vector of centred rows (its sign is the SVD's)."""
    return torch.linalg.svd(centred, full_matrices=False)[2][0]


def spectral_scores(rows: torch.Tensor) -> torch.Tensor:
    """Squared projection of each centred row on the rows' top right singular vector (float64)."""
    centred = rows.double() - rows.double().mean(dim=0, keepdim=True)
    return (centred @ top_direction(centred)) ** 2


def per_class_spectral_scores(
    rows: torch.Tensor, labels: torch.Tensor, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`spectral_scores` inside every class of at least two images (0 for a class of one), and per class the
    share of its centred features' variance along that top direction (a backdoor's target class has one
    dominant direction: what Spectral Signatures relies on)."""
    scores = torch.zeros(len(rows), dtype=torch.float64, device=rows.device)
    dominance = torch.zeros(classes, dtype=torch.float64)
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        if len(members) >= 2:
            scores[members] = spectral_scores(rows[members])
            centred = rows[members].double() - rows[members].double().mean(dim=0, keepdim=True)
            dominance[c] = scores[members].sum().cpu() / centred.square().sum().clamp_min(1e-12).cpu()
    return scores, dominance


def last_stage_features(ctx: DetectionContext) -> torch.Tensor:
    """The trained model's last-stage features of every training image (N, D), float32."""
    model = ctx.trained()
    t = ctx.trainer
    point = model.insertion_points[-1]
    return features(model, ctx.train_set.images, point, t.normalize, batch_size=t.config.eval_batch_size, amp=t.amp)


@component
class SpectralSignatureDetector(Detector):
    name = "ss"

    epsilon: float = option(0.1, "the assumed poisoned fraction", "(0, 1)")
    removal_factor: float = option(1.5, "flags removal_factor * epsilon of each class", "> 0")

    def detect(self, ctx: DetectionContext) -> Detection:
        labels = ctx.train_set.labels
        raw, dominance = per_class_spectral_scores(last_stage_features(ctx), labels, ctx.train_set.num_classes)
        flagged = top_per_class(raw, labels, self.removal_factor * self.epsilon)
        evidence = "share of the class's feature variance along its top direction"
        return Detection(
            within_class_z(raw, labels).cpu(), flagged.cpu(), class_scores=dominance, class_evidence=evidence
        )
