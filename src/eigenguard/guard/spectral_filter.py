"""The spectral filter of EigenGuard (Algorithm 1 of the paper), computed three ways.

Given a feature matrix `feat` (n rows, one per image, D columns) with SVD U diag(s) V^T, the filter sets

    s'_i = sigma_k            for i <= k   (the top k directions all get the same scale)
    s'_i = floor * sigma_k    for i >  k   (floor = 0.001 in the paper)

and returns rows of U diag(s') V^T. That is `spectrum="paper"`; two variants separate its two halves
(the study of which half costs accuracy and which removes a backdoor, docs/results/eigenguard-study.md):

    "equalize"  s'_i = min(s_i, sigma_k)   the top k capped at sigma_k, the tail kept as it is (floor unused)
    "shrink"    s'_i = s_i for i <= k, floor * sigma_k for i > k   the top kept, the tail shrunk

Choices the paper leaves open, made here:

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

from typing import Any, Literal, get_args

import torch

from eigenguard.guard.arrowhead import FrozenHistory, bordered_weights
from eigenguard.guard.safe_eigh import safe_eigh

Spectrum = Literal["paper", "equalize", "shrink"]
Solver = Literal["secular", "eigh"]
Grad = Literal["constant", "full"]
SPECTRA: tuple[str, ...] = get_args(Spectrum)
SOLVERS: tuple[str, ...] = get_args(Solver)
GRADS: tuple[str, ...] = get_args(Grad)


def _filter_ratio(
    eigenvalues_desc: torch.Tensor,
    k: int,
    floor: float,
    n: int,
    spectrum: str = "paper",
    eps: float | None = None,
) -> torch.Tensor:
    """s'_i / s_i for eigenvalues s_i^2 sorted descending along the last dim (0 for zero directions).
    eps: the machine epsilon of the zero-direction threshold (default: that of the eigenvalues' dtype)."""
    eps = torch.finfo(eigenvalues_desc.dtype).eps if eps is None else eps
    top = eigenvalues_desc[..., :1].clamp_min(0)
    valid = eigenvalues_desc > 10 * n * eps * top
    rank = valid.sum(dim=-1, keepdim=True)
    # sigma_k with k clamped to the numerical rank (index k-1, or r-1 when r < k; 0 when r = 0).
    k_index = (rank.clamp(max=k) - 1).clamp_min(0)
    s = torch.where(valid, eigenvalues_desc, torch.ones_like(eigenvalues_desc)).sqrt()
    sigma_k = torch.gather(s, -1, k_index) * (rank > 0)
    top_k = torch.arange(eigenvalues_desc.shape[-1], device=eigenvalues_desc.device) < k
    if spectrum == "paper":
        target = torch.where(top_k, sigma_k, floor * sigma_k)
    elif spectrum == "equalize":
        target = torch.minimum(s, sigma_k)
    elif spectrum == "shrink":
        target = torch.where(top_k, s, floor * sigma_k)
    else:
        raise ValueError(f"unknown spectrum '{spectrum}'; allowed: {', '.join(SPECTRA)}")
    return torch.where(valid, target / s, torch.zeros_like(s))


_FLUSH = float(torch.nextafter(torch.tensor(2.0**-60), torch.tensor(0.0)))  # the largest float below 2^-60


def _scale_of(ref: torch.Tensor) -> torch.Tensor:
    """The power of two that brings max |ref| to [1, 2) (1 for an all-zero or non-finite ref)."""
    peak = ref.detach().abs().amax()
    usable = (peak > 0) & torch.isfinite(peak)  # a tensor, not a branch: no device sync on a GPU
    return torch.where(usable, torch.exp2(-torch.floor(torch.log2(peak.clamp_min(_FLUSH)))), 1.0)


def _normalized(feat: torch.Tensor, reference: torch.Tensor | None = None, own: bool = False) -> Any:
    """feat scaled by a power of two to max |entry| ~ 1 (of `reference`, default feat), entries below 2^-60
    of that set to 0. With a `reference` of m rows, returns (first m rows, the rest). own=True: `feat` is a
    temporary of the caller's, overwritten in place where it needs no gradient (on CPU every fresh n x D
    buffer costs page faults).

    Only the Gram matrix is built from it. The filter's ratios s'_i / s_i do not change under scaling, and a
    power-of-two scale is exact, so the result is the same; but without it, features with entries near 1e-20
    (seen when a small k starves a layer) make the Gram product run into float32 denormals, slow on a CPU.
    """
    scale = _scale_of(feat if reference is None else reference)
    # hardshrink zeroes |x| <= _FLUSH, i.e. |x| < 2^-60, in one fused pass
    if own and not feat.requires_grad:
        scaled = torch.hardshrink(feat.mul_(scale), _FLUSH, out=feat)
    else:
        scaled = torch.nn.functional.hardshrink(feat * scale, _FLUSH)
    return scaled if reference is None else (scaled[: len(reference)], scaled[len(reference) :])


def filter_rows_svd(
    feat: torch.Tensor, rows: int, *, k: int, floor: float = 1e-3, spectrum: str = "paper"
) -> torch.Tensor:
    """Reference: the last `rows` rows of U diag(s') V^T from a literal SVD of `feat` (n x D)."""
    n = feat.shape[0]
    u, s, vh = torch.linalg.svd(feat, full_matrices=False)
    ratio = _filter_ratio(s.square(), k, floor, n, spectrum)
    return (u[-rows:] * (ratio * s)) @ vh


def filter_rows_gram(
    feat: torch.Tensor,
    rows: int,
    *,
    k: int,
    floor: float = 1e-3,
    grad: str = "constant",
    dtype: torch.dtype | None = None,
    spectrum: str = "paper",
) -> torch.Tensor:
    """Fast path: the last `rows` rows of the filtered `feat` (n x D) via the n x n Gram matrix.

    grad="constant": the filter matrix U_rows diag(s'/s) U^T is treated as a constant in the backward pass
    (gradients flow through the final product only: cheap, always stable). grad="full": gradients also
    flow through the eigendecomposition (`safe_eigh`), i.e. through which directions are top-k.
    dtype: the dtype of the Gram matrix and its eigh (default: feat's); the final product stays in feat's.
    """
    n = feat.shape[0]
    return filter_jointly(
        feat[: n - rows], feat[n - rows :], k=k, floor=floor, grad=grad, dtype=dtype, spectrum=spectrum
    )


def filter_jointly(
    context: torch.Tensor,
    batch: torch.Tensor,
    *,
    k: int,
    floor: float = 1e-3,
    grad: str = "constant",
    dtype: torch.dtype | None = None,
    spectrum: str = "paper",
) -> torch.Tensor:
    """`filter_rows_gram` of [context; batch] for the `batch` rows, with the final product split in two,
    (mixing over context) @ context + (mixing over batch) @ batch, so that where only `batch` needs a
    gradient (the guard: the context is the history and the anchors) the backward pass forms a
    rows x D gradient from a rows x rows block instead of an n x D one from the whole rows x n matrix."""
    if grad not in GRADS:
        raise ValueError(f"unknown grad mode '{grad}'; allowed: {', '.join(GRADS)}")
    c, n = context.shape[0], context.shape[0] + batch.shape[0]
    with torch.set_grad_enabled(grad == "full" and torch.is_grad_enabled()):
        feat = torch.cat([context, batch])
        wide = _normalized(feat if dtype is None else feat.to(dtype), own=True)
        gram = wide @ wide.mT
        eigenvalues, eigenvectors = safe_eigh(gram) if grad == "full" else torch.linalg.eigh(gram)
        eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)  # descending
        ratio = _filter_ratio(eigenvalues, k, floor, n, spectrum)
        mixing = ((eigenvectors[c:] * ratio) @ eigenvectors.mT).to(batch.dtype)  # (rows x n)
    if grad == "constant":
        mixing = mixing.detach()
    out = mixing[:, c:] @ batch
    return out if c == 0 else torch.addmm(out, mixing[:, :c], context)


def _each_weights(
    h: torch.Tensor, xs: torch.Tensor, k: int, floor: float, spectrum: str, eigh: Any = torch.linalg.eigh
) -> torch.Tensor:
    """(b, m + 1): row i is the last row of U diag(s'/s) U^T for the bordered Gram of [h; xs_i]."""
    m, b = h.shape[0], xs.shape[0]
    n = m + 1
    cross = xs @ h.mT  # (b, m)
    top = (h @ h.mT).expand(b, m, m)
    gram = torch.cat(
        [torch.cat([top, cross.unsqueeze(2)], dim=2), torch.cat([cross, (xs * xs).sum(1, keepdim=True)], 1)[:, None]],
        dim=1,
    )
    eigenvalues, eigenvectors = eigh(gram)
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    ratio = _filter_ratio(eigenvalues, k, floor, n, spectrum)
    return (eigenvectors * (ratio * eigenvectors[:, m, :]).unsqueeze(1)).sum(dim=-1)


def frozen_history(history: torch.Tensor, dtype: torch.dtype | None = None) -> FrozenHistory:
    """The decomposition of a frozen history that per-sample inference reuses for every image (a guard
    caches it until its history changes). dtype: the guard's precision (default: history's)."""
    hd = history.detach() if dtype is None else history.detach().to(dtype)
    scale = _scale_of(hd)
    h = torch.nn.functional.hardshrink(hd * scale, _FLUSH)
    return FrozenHistory.of(h, 10 * (len(h) + 1) * torch.finfo(h.dtype).eps, scale)


def filter_each_against(
    history: torch.Tensor,
    x: torch.Tensor,
    *,
    k: int,
    floor: float = 1e-3,
    dtype: torch.dtype | None = None,
    spectrum: str = "paper",
    grad: str | None = None,
    solver: str = "secular",
    frozen: FrozenHistory | None = None,
) -> torch.Tensor:
    """Filter every row x_i of `x` (b x D) as the last row of [history; x_i], independently of the other rows.

    Row i's output is w_i[:m] @ H + w_i[m] * x_i, with w_i the last row of U diag(s'/s) U^T for the
    bordered Gram matrix [[H H^T, H x_i^T], [x_i H^T, x_i x_i^T]], so nothing of size b x m x D is formed.
    solver="secular" (inference, the default): H H^T is decomposed once (`frozen`, from `frozen_history`,
    computed here if not given) and each image's eigenvalues come from its secular equation, O(p m) per
    image (arrowhead.py). solver="eigh": one batched dense eigh of the b bordered matrices, O(m^3) per
    image: the reference, and the path that carries gradients.
    grad=None (inference, the default): no gradient at all. "constant" or "full" (the guard's per-sample
    training mode, always through eigh): gradients reach `x`, as in `filter_rows_gram`; `history` never
    gets one.
    """
    if grad is not None and grad not in GRADS:
        raise ValueError(f"unknown grad mode '{grad}'; allowed: {', '.join(GRADS)}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver '{solver}'; allowed: {', '.join(SOLVERS)}")
    if grad is None and solver == "secular" and len(history):
        with torch.no_grad():
            hd = history.detach() if dtype is None else history.detach().to(dtype)
            xd = x if dtype is None else x.to(dtype)
            frozen = frozen_history(history, dtype) if frozen is None else frozen
            xs = torch.nn.functional.hardshrink(xd * frozen.scale, _FLUSH)  # the history's scale
            m, eps = len(hd), torch.finfo(hd.dtype).eps
            w_h, w_x = bordered_weights(frozen, xs, lambda ev: _filter_ratio(ev, k, floor, m + 1, spectrum, eps))
            return (w_h.to(hd.dtype) @ hd + w_x.to(hd.dtype)[:, None] * xd).to(x.dtype)
    with torch.set_grad_enabled(grad is not None and torch.is_grad_enabled()):
        hd = history.detach() if dtype is None else history.detach().to(dtype)
        xd = x if dtype is None else x.to(dtype)
        with torch.set_grad_enabled(grad == "full" and torch.is_grad_enabled()):
            # One power-of-two scale, taken from the frozen history, so that it cannot depend on the batch.
            h, xs = _normalized(torch.cat([hd, xd]), reference=hd, own=True) if len(hd) else (hd, xd)
            weights = _each_weights(h, xs, k, floor, spectrum, safe_eigh if grad == "full" else torch.linalg.eigh)
        return (weights[:, :-1] @ hd + weights[:, -1:] * xd).to(x.dtype)
