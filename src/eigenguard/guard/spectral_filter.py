"""The spectral filter of EigenGuard (Algorithm 1 of the paper), computed three ways.

Given a feature matrix `feat` (n rows, one per image, D columns) with SVD U diag(s) V^T, the filter sets

    s'_i = sigma_k            for i <= k   (the top k directions all get the same scale)
    s'_i = floor * sigma_k    for i >  k   (floor = 0.001 in the paper)

and returns rows of U diag(s') V^T. Choices the paper leaves open, made here:

* sigma_k is the k-th largest singular value, counting from 1. If the matrix has numerical rank r < k,
  sigma_r is used (the whole range is flattened to one scale).
* Numerically zero directions (s_i^2 <= 10 n eps s_1^2, eps of the compute dtype) get s'_i = 0: they carry
  no feature, and their singular vectors are arbitrary, so lifting them to floor * sigma_k would add noise
  that depends on the LAPACK driver. An all-zero input maps to zero.

Three implementations agree on that definition (tests check them against each other):

* `filter_rows_svd`: the literal SVD; the reference, slow for wide matrices (D = 65536 in the paper).
* `filter_rows_gram`: the fast path. With G = feat feat^T = U diag(s^2) U^T (an n x n eigenproblem),
  U diag(s') V^T = U diag(s'/s) U^T feat, so the wanted rows are (U_rows diag(s'/s) U^T) feat: one n x n
  Gram matrix, one n x n eigh, one (rows x n) @ (n x D) product; never an n x D SVD or a D x D matrix.
* `filter_each_against`: every row of `x` filtered separately against a fixed matrix `history` (Algorithm
  1 with a batch of one image), all rows at once through one batched eigh of bordered Gram matrices.
"""

from typing import Any

import torch

from eigenguard.guard.safe_eigh import safe_eigh


def _filter_ratio(eigenvalues_desc: torch.Tensor, k: int, floor: float, n: int) -> torch.Tensor:
    """s'_i / s_i for eigenvalues s_i^2 sorted descending along the last dim (0 for zero directions)."""
    eps = torch.finfo(eigenvalues_desc.dtype).eps
    top = eigenvalues_desc[..., :1].clamp_min(0)
    valid = eigenvalues_desc > 10 * n * eps * top
    rank = valid.sum(dim=-1, keepdim=True)
    # sigma_k with k clamped to the numerical rank (index k-1, or r-1 when r < k; 0 when r = 0).
    k_index = (rank.clamp(max=k) - 1).clamp_min(0)
    s = torch.where(valid, eigenvalues_desc, torch.ones_like(eigenvalues_desc)).sqrt()
    sigma_k = torch.gather(s, -1, k_index) * (rank > 0)
    position = torch.arange(eigenvalues_desc.shape[-1], device=eigenvalues_desc.device)
    target = torch.where(position < k, sigma_k, floor * sigma_k)
    return torch.where(valid, target / s, torch.zeros_like(s))


def _normalized(feat: torch.Tensor, reference: torch.Tensor | None = None) -> Any:
    """feat scaled by a power of two to max |entry| ~ 1 (of `reference`, default feat), entries below 2^-60
    of that set to 0. With a `reference` of m rows, returns (first m rows, the rest).

    Only the Gram matrix is built from it. The filter's ratios s'_i / s_i do not change under scaling, and a
    power-of-two scale is exact, so the result is the same; but without it, features with entries near 1e-20
    (seen when a small k starves a layer) make the Gram product run into float32 denormals, 30x slower on CPU.
    """
    ref = feat if reference is None else reference
    peak = ref.detach().abs().amax()
    scaled = feat
    if peak > 0 and torch.isfinite(peak):
        scaled = feat * torch.exp2(-torch.floor(torch.log2(peak)))
        scaled = torch.where(scaled.abs() < 2.0**-60, torch.zeros_like(scaled), scaled)
    return scaled if reference is None else (scaled[: len(reference)], scaled[len(reference) :])


def filter_rows_svd(feat: torch.Tensor, rows: int, k: int, floor: float = 1e-3) -> torch.Tensor:
    """Reference: the last `rows` rows of U diag(s') V^T from a literal SVD of `feat` (n x D)."""
    n = feat.shape[0]
    u, s, vh = torch.linalg.svd(feat, full_matrices=False)
    ratio = _filter_ratio(s.square(), k, floor, n)
    return (u[-rows:] * (ratio * s)) @ vh


def filter_rows_gram(
    feat: torch.Tensor,
    rows: int,
    k: int,
    floor: float = 1e-3,
    grad: str = "constant",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fast path: the last `rows` rows of the filtered `feat` (n x D) via the n x n Gram matrix.

    grad="constant": the filter matrix U_rows diag(s'/s) U^T is treated as a constant in the backward pass
    (gradients flow through the final product only: cheap, always stable). grad="full": gradients also
    flow through the eigendecomposition (`safe_eigh`), i.e. through which directions are top-k.
    dtype: the dtype of the Gram matrix and its eigh (default: feat's); the final product stays in feat's.
    """
    if grad not in ("constant", "full"):
        raise ValueError(f"unknown grad mode '{grad}'; allowed: constant, full")
    n = feat.shape[0]
    with torch.set_grad_enabled(grad == "full" and torch.is_grad_enabled()):
        wide = _normalized(feat if dtype is None else feat.to(dtype))
        gram = wide @ wide.mT
        eigenvalues, eigenvectors = safe_eigh(gram) if grad == "full" else torch.linalg.eigh(gram)
        eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)  # descending
        ratio = _filter_ratio(eigenvalues, k, floor, n)
        mixing = ((eigenvectors[-rows:] * ratio) @ eigenvectors.mT).to(feat.dtype)  # (rows x n)
    if grad == "constant":
        mixing = mixing.detach()
    return mixing @ feat


@torch.no_grad()
def filter_each_against(
    history: torch.Tensor, x: torch.Tensor, k: int, floor: float = 1e-3, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Filter every row x_i of `x` (b x D) as the last row of [history; x_i], independently of the other rows.

    The bordered Gram matrices [[H H^T, H x_i^T], [x_i H^T, x_i x_i^T]] share their top-left block; they are
    built in one go and decomposed by one batched eigh. Row i's output is w_i[:m] @ H + w_i[m] * x_i, with
    w_i the last row of U diag(s'/s) U^T, so nothing of size b x m x D is ever formed. Inference only (no grad).
    """
    out_dtype = x.dtype
    if dtype is not None:
        history, x = history.to(dtype), x.to(dtype)
    m, b = history.shape[0], x.shape[0]
    n = m + 1
    # One power-of-two scale, taken from the frozen history, so that it cannot depend on the batch.
    h, xs = _normalized(torch.cat([history, x]), reference=history) if m else (history, x)
    gram = x.new_empty(b, n, n)
    gram[:, :m, :m] = h @ h.mT
    cross = xs @ h.mT  # (b, m)
    gram[:, m, :m] = cross
    gram[:, :m, m] = cross
    gram[:, m, m] = (xs * xs).sum(dim=1)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    ratio = _filter_ratio(eigenvalues, k, floor, n)
    weights = (eigenvectors * (ratio * eigenvectors[:, m, :]).unsqueeze(1)).sum(dim=-1)  # (b, n)
    return (weights[:, :m] @ history + weights[:, m:] * x).to(out_dtype)
