"""Activation Clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by Activation
Clustering", 2018) as a detector.

For each class: the trained model's last-hidden-layer activations (the classifier's input) of the class's
images, reduced to `dims` (10) by independent component analysis, split into two clusters by k-means.
Poisons form a cluster of their own inside the target class; Chen et al. call a class poisoned when its
smaller cluster holds at most `size_threshold` (35%) of it, and flag that cluster (relative-size analysis;
IBM ART's defaults: FastICA to 10 dimensions, 2 clusters, size threshold 0.35). The silhouette score of the
split is reported per class. Exclusionary reclassification needs retraining and is not done.

Scores: how much nearer an image lies to its class's smaller cluster than to the larger (as robust z-scores
inside the class), the flagged clusters' images above all others. No clean data.
"""

from typing import Any

import numpy as np
import torch

from eigenguard.detectors.base import Detection, DetectionContext, Detector, flagged_first, within_class_z
from eigenguard.options import component, option
from eigenguard.training.features import classifier_inputs


def split_class(rows: np.ndarray, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """One class's rows reduced by FastICA and split in two by k-means: whether each row is in the smaller
    cluster, its margin (distance to the larger centre minus to the smaller, over the mean distance) and the
    split's silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import FastICA
    from sklearn.metrics import silhouette_score

    reduced = FastICA(n_components=dims, max_iter=1000, tol=0.005, random_state=seed).fit_transform(rows)
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced)
    small = int(np.bincount(km.labels_, minlength=2).argmin())
    distance = np.linalg.norm(reduced[:, None, :] - km.cluster_centers_[None], axis=2)
    margin = (distance[:, 1 - small] - distance[:, small]) / (distance.mean() + 1e-12)
    silhouette = float(silhouette_score(reduced, km.labels_)) if len(set(km.labels_)) == 2 else 0.0
    return km.labels_ == small, margin, silhouette


@component
class ActivationClustering(Detector):
    name = "ac"

    dims: int = option(10, "independent components kept per class (Chen et al.: 10)", ">= 1")
    size_threshold: float = option(0.35, "a class whose smaller cluster is at most this share is poisoned", "(0, 0.5]")
    seed: int = option(0, "seed of ICA and k-means", ">= 0")

    def detect(self, ctx: DetectionContext) -> Detection:
        model, t = ctx.trained(), ctx.trainer
        rows = classifier_inputs(model, ctx.train_set.images, t.normalize, batch_size=t.config.eval_batch_size)
        return self.cluster(rows.double().cpu().numpy(), ctx.train_set.labels.cpu(), ctx.train_set.num_classes)

    def cluster(self, rows: np.ndarray, labels: torch.Tensor, num_classes: int) -> Detection:
        """The detection from the activations `rows` (N, D) of images labelled `labels`."""
        margin = torch.zeros(len(labels), dtype=torch.float64)
        is_flagged = torch.zeros(len(labels), dtype=torch.bool)
        separation = torch.zeros(num_classes, dtype=torch.float64)
        classes: dict[str, Any] = {}
        for c in labels.unique().tolist():
            members = torch.nonzero(labels == c).flatten()
            if len(members) < max(4, self.dims + 1):  # too few images to reduce and split
                continue
            in_small, class_margin, silhouette = split_class(rows[members.numpy()], self.dims, self.seed)
            margin[members] = torch.from_numpy(class_margin)
            share = float(in_small.mean())
            poisoned = share <= self.size_threshold
            if poisoned:
                is_flagged[members[torch.from_numpy(in_small)]] = True
                separation[c] = silhouette
            classes[str(c)] = {
                "smaller_share": round(share, 4),
                "silhouette": round(silhouette, 4),
                "poisoned": poisoned,
            }
        scores = flagged_first(within_class_z(margin, labels), is_flagged)
        flagged = torch.nonzero(is_flagged).flatten()
        evidence = "silhouette of the class's two clusters, where the smaller is at most size_threshold of it"
        return Detection(scores, flagged, {"classes": classes}, class_scores=separation, class_evidence=evidence)
