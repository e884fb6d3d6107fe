"""SPECTRE (Hayase, Kong, Somani & Oh, "SPECTRE: Defending Against Backdoor Attacks Using Robust Statistics",
ICML 2021) as a detector: whiten a class's features by a robust covariance estimate, then score each image by
its quantum entropy (QUE) outlier score. Reference code: github.com/SewoongLab/spectre-defense
(quantum_filters.jl, dkk17.jl, util.jl, run_filters.jl); this is a re-implementation, not a port.

For one class of n images with eps expected poisons (in the reference, the target class only):
1. Representations: the features at insertion point `point` (default stage3, the third residual stage: the
   reference reads ResNet-18's layer3 last block), flattened, centred on their mean, PCA to `dims` = 100.
2. For each k in round(linspace(1, sqrt(dims), 10)^2) = {1, 4, 9, ..., 100} (x = the first k components):
   a. robust covariance: the filter of Diakonikolas, Kamath, Kane, Li, Moitra & Stewart (2017): whiten by the
      second moment; drop points with |y|^2 >= C d log(n / tau); else take the top eigenpair (lambda, V) of the
      covariance of y (x) y, stop if lambda <= 1 + C e log(1/e)^2, else drop the points whose
      |(y'Vy - tr V)/sqrt2 - median| exceeds the first threshold T = diff - 3 passing the reference's tail
      test. e = eps / n, tau = 0.1, C = 10; repeated until it stops or 2 eps points were dropped.
   b. Sigma = covariance of the kept points; every point whitened by Sigma^-1/2 (still centred on the PCA
      mean); Sigma' = their covariance; M = exp(alpha (Sigma' - I) / (|Sigma'|_2 - 1)) / tr, alpha = 4;
      QUE score x~' M x~ (k = 1: the squared projection, no whitening, as the reference).
   c. the round(1.5 eps) highest scores are the suspects.
3. k maximises tr(Sigma' M) / tr M in all `dims` components, Sigma the covariance of the non-suspects and
   Sigma' that of every point whitened by it: how spiked the class looks once its suspects are set aside.

Unknown target: every class is treated as if it were the target. `epsilon` is the assumed poisoned fraction
of the whole training set (N images): if class c is the target, all epsilon N poisons are labelled c, so
eps_c = max(1, round(epsilon N)), at most n_c // 2 (robust statistics needs a clean majority). Flagged: the
round(1.5 eps_c) suspects of the class with the highest class score, the one that looks like the target
(the reference filters its known target class only; flagging 1.5 eps_c in every class would flag most of a
balanced set). Scores: the chosen k's QUE score as a robust z-score inside its class, that class's suspects
above all others. class_scores: the chosen k's tr(Sigma' M) / tr M (the reference's own selection statistic, a soft
largest eigenvalue of the robustly whitened class) over tr(Sigma') / dims (its mean eigenvalue): 1 for an
isotropic class, large when a group the filter set aside is spread along a few shared directions, as the
paper's poisons are. No clean data.

Departures, for small classes and numerics only: dims <= min(D, n_c // 4 - 1) and the filter drops at most
n_c - dims - 1 points (the kept points must span the PCA; the reference assumes n >> 100); a class under 8
images is not scored; eigenvalues are floored before Sigma^-1/2; M's denominator is floored at 1e-12; the
top eigenpair comes from ARPACK (the reference: KrylovKit, same start vector of ones). stage3 here is the
third stage after its final ReLU (the reference's block output is taken before it).

Cost: the filter usually drops one or a few points a step and may drop up to 2 eps_c, each step an ARPACK
solve on a k^2-dimensional operator, for each of the ten k: minutes for a class of a few hundred images on
a CPU, a few for thousands (docs/components.md times it). A reduced budget, off by default: `fit_images` = m
estimates the PCA, the robust covariance and the QUE matrix of a class from m of its images drawn at random
(seeded by the class), with eps_c scaled to m / n_c, and scores every image with them; the suspects are
still the round(1.5 eps_c) highest of the class, and the class statistic uses every image.
"""

import math
from typing import Any

import numpy as np
import torch

from eigenguard.detectors.base import Detection, DetectionContext, Detector, flagged_first, within_class_z
from eigenguard.options import component, option
from eigenguard.training.features import features

TAU, C = 0.1, 10.0  # dkk17.jl's confidence and constant
LIMIT_FILTER = 2.0  # the robust covariance filter drops at most 2 eps points (quantum_filters.jl limit1)


def inv_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Sigma^-1/2 of a symmetric PSD matrix (eigenvalues floored: a near-singular one stays finite)."""
    w, v = np.linalg.eigh(sigma)
    return (v / np.sqrt(np.maximum(w, 1e-12 * max(w.max(), 1e-300)))) @ v.T


def cov(x: np.ndarray, corrected: bool = True) -> np.ndarray:
    return np.atleast_2d(np.cov(x, rowvar=False, bias=not corrected))


def que_matrix(sigma: np.ndarray, alpha: float) -> np.ndarray:
    """exp(alpha (Sigma - I) / (|Sigma|_2 - 1)) over its trace, computed stably through Sigma's eigenbasis."""
    w, v = np.linalg.eigh(sigma)
    weights = np.exp(alpha * (w - w.max()) / max(w.max() - 1.0, 1e-12))  # shifted by the max: same after / tr
    return (v * (weights / weights.sum())) @ v.T


def quadratic(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """x_i' M x_i of every row (through BLAS)."""
    return ((x @ m) * x).sum(axis=1)


def lowest(values: np.ndarray, count: int) -> np.ndarray:
    """Mask of the `count` lowest values (none for count <= 0)."""
    mask = np.zeros(len(values), dtype=bool)
    mask[np.argsort(values, kind="stable")[: max(count, 0)]] = True
    return mask


def top_fourth_moment_direction(y: np.ndarray) -> tuple[float, np.ndarray]:
    """Top eigenpair of T = mean of vec(yy')vec(yy')' - vec(I)vec(I)', matrix-free: T V = mean((y'Vy) yy') - tr(V) I."""
    n, d = y.shape
    if d <= 4:  # ARPACK needs room: the explicit d^2 x d^2 matrix
        z = (y[:, :, None] * y[:, None, :]).reshape(n, d * d)
        eye = np.eye(d).ravel()
        w, v = np.linalg.eigh(z.T @ z / n - np.outer(eye, eye))
        return float(w[-1]), v[:, -1].reshape(d, d)
    from scipy.sparse.linalg import LinearOperator, eigsh

    def apply(flat: np.ndarray) -> np.ndarray:
        m = flat.reshape(d, d)
        q = quadratic(y, m)
        return ((y.T * q) @ y / n - np.trace(m) * np.eye(d)).ravel()

    op = LinearOperator((d * d, d * d), matvec=apply, dtype=np.float64)
    w, v = eigsh(op, k=1, which="LA", v0=np.ones(d * d), tol=1e-8)  # T is a covariance: PSD, as dkk17.jl's :LM
    return float(w[0]), v[:, 0].reshape(d, d)


def dkk_filter_step(s: np.ndarray, e: float, limit: int) -> np.ndarray | None:
    """One step of the DKK17 covariance filter on rows `s`: the mask of points kept (at most `limit` dropped),
    or None when it stops (the covariance is certified, or no threshold passes the tail test)."""
    n, d = s.shape
    y = s @ inv_sqrt(s.T @ s / n)  # whitened by the second moment, not re-centred (as dkk17.jl)
    norms = (y * y).sum(axis=1)
    far = norms >= C * d * math.log(n / TAU)
    if far.any():
        return ~far | lowest(norms, n - limit)
    lam, v = top_fourth_moment_direction(y)
    if lam <= 1 + C * e * math.log(1 / e) ** 2:  # dkk17.jl's Q(., V) / 2 = |V|_F^2 = 1 for a unit eigenvector
        return None
    v = (v + v.T) / 2
    p = (quadratic(y, v) - np.trace(v)) / math.sqrt(2)
    diffs = np.abs(p - np.median(p))
    t = np.sort(diffs) - 3.0
    tail = np.ones(n)
    big = t > 10 * math.log(1 / e)
    tail[big] = 3 * e / (t[big] * np.log(t[big])) ** 2
    passing = (t > 0) & (np.arange(1, n + 1) / n >= tail)  # rank over n, as dkk17.jl (its i counts from below)
    if not passing.any():
        return None
    return (diffs <= t[passing.argmax()]) | lowest(diffs, n - limit)


def robust_keep(x: np.ndarray, e: float, limit: int) -> np.ndarray:
    """DKK17's filter iterated (cov_estimation_iterate): which rows of `x` are kept."""
    idx = np.arange(len(x))
    while limit > 0:
        keep = dkk_filter_step(x[idx], e, limit)
        if keep is None:
            break
        limit -= int((~keep).sum())
        idx = idx[keep]
    mask = np.zeros(len(x), dtype=bool)
    mask[idx] = True
    return mask


def spectre_class(
    rows: torch.Tensor, eps: int, dims: int, alpha: float, removal_factor: float, fit: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """SPECTRE in one class: QUE scores at the chosen k, the suspects' mask, and what was found (k, statistic).
    `fit`: the rows (indices) the PCA, the robust covariance and the QUE matrix are estimated from, with eps
    scaled to their share (None: every row, the reference); every row is scored."""
    n = len(rows)
    fit = torch.arange(n, device=rows.device) if fit is None else fit
    m_fit = len(fit)
    eps_fit = max(1, round(eps * m_fit / n))
    mean = rows[fit].double().mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(rows[fit].double() - mean, full_matrices=False)
    pca = ((rows.double() - mean) @ vh[:dims].T).cpu().numpy()
    on = fit.cpu().numpy()
    limit = min(round(LIMIT_FILTER * eps_fit), m_fit - dims - 1)  # the kept points must span `dims` dimensions
    removed = min(round(removal_factor * eps), n - dims - 1)
    best: dict[str, Any] = {"statistic": -math.inf}
    for k in sorted({round(v**2) for v in np.linspace(1, math.sqrt(dims), 10)}):
        x = pca[:, :k]
        if k == 1:
            scores, kept = x[:, 0] ** 2, m_fit
        else:
            keep = robust_keep(x[on], eps_fit / m_fit, limit)
            whiten = inv_sqrt(cov(x[on][keep], corrected=False))
            m = que_matrix(cov(x[on] @ whiten), alpha)
            scores, kept = quadratic(x @ whiten, m), int(keep.sum())
        suspects = lowest(-scores, removed)
        sigma = cov(pca @ inv_sqrt(cov(pca[~suspects])))
        statistic = float(np.trace(sigma @ que_matrix(sigma, alpha)))
        if statistic > best["statistic"]:  # strictly: the smallest k wins a tie
            spike = statistic / float(np.trace(sigma) / dims)
            best = {"k": k, "statistic": statistic, "spike": spike, "filter_kept": kept, "s": scores, "m": suspects}
    return best.pop("s"), best.pop("m"), best


@component
class Spectre(Detector):
    name = "spectre"

    epsilon: float = option(
        0.1, "assumed poisoned fraction of the whole training set (a class: at most half)", "(0, 1)"
    )
    point: str = option("stage3", "insertion point whose features are read (reference: ResNet-18's third stage)")
    dims: int = option(100, "PCA dimensions; k is searched over round(linspace(1, sqrt(dims), 10)^2)", ">= 1")
    alpha: float = option(4.0, "QUE exponent alpha", "> 0")
    removal_factor: float = option(1.5, "flags removal_factor * eps_c of each class", "> 0")
    fit_images: int | None = option(
        None, "estimate each class's statistics from at most this many of its images, drawn at random (null: all)",
        ">= 8",
    )  # fmt: skip

    def detect(self, ctx: DetectionContext) -> Detection:
        model, t = ctx.trained(), ctx.trainer
        rows = features(
            model, ctx.train_set.images, self.point, t.normalize, batch_size=t.config.eval_batch_size, amp=t.amp
        )
        return self.filter(rows, ctx.train_set.labels, ctx.train_set.num_classes)

    def filter(self, rows: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Detection:
        """The detection from features `rows` (N, D) of images labelled `labels`."""
        labels = labels.cpu()
        raw = torch.zeros(len(labels), dtype=torch.float64)
        is_flagged = torch.zeros(len(labels), dtype=torch.bool)
        spike = torch.zeros(num_classes, dtype=torch.float64)
        classes: dict[str, Any] = {}
        for c in labels.unique().tolist():
            members = torch.nonzero(labels == c).flatten()
            n = len(members)
            dims = min(self.dims, rows.shape[1], n // 4 - 1)  # a quarter of the class must span the PCA
            if dims < 1:  # too few images for a covariance
                continue
            eps = min(max(1, round(self.epsilon * len(labels))), n // 2)
            fit = None
            if self.fit_images is not None and n > self.fit_images:
                fit = torch.randperm(n, generator=torch.Generator().manual_seed(c))[: self.fit_images].sort().values
                dims = min(dims, self.fit_images // 4 - 1)
            scores, suspects, found = spectre_class(
                rows[members.to(rows.device)], eps, dims, self.alpha, self.removal_factor,
                None if fit is None else fit.to(rows.device),
            )  # fmt: skip
            raw[members] = torch.from_numpy(scores)
            is_flagged[members[torch.from_numpy(suspects)]] = True
            spike[c] = found["spike"]
            classes[str(c)] = {
                "eps": eps, "dims": dims, "fit_images": n if fit is None else len(fit),
                **{key: round(v, 4) for key, v in found.items()},
            }  # fmt: skip
        evidence = "QUE soft top eigenvalue of the robustly whitened class over its mean eigenvalue"
        is_flagged &= labels == int(spike.argmax())  # the suspects of the class that looks like the target
        scores = flagged_first(within_class_z(raw, labels), is_flagged)
        flagged = torch.nonzero(is_flagged).flatten()
        return Detection(scores, flagged, {"classes": classes}, class_scores=spike, class_evidence=evidence)
