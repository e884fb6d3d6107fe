"""A symmetric eigendecomposition whose backward pass never divides by zero.

The textbook eigenvector gradient has a 1 / (lambda_j - lambda_i) factor per pair: infinite where two
eigenvalues coincide (duplicated samples, zero rows, any rank-deficient batch). There the eigenvectors are
not unique, and neither is their derivative. `safe_eigh` drops the pair terms whose eigenvalue gap is below
`rel_gap * max|lambda|` (the mixing inside a degenerate eigenspace, which a spectral function that treats
those eigenvalues alike does not see) and keeps every other term exact.
"""

import torch


class _SafeEigh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, rel_gap: float) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        eigenvalues, eigenvectors = torch.linalg.eigh(a)
        ctx.save_for_backward(eigenvalues, eigenvectors)
        ctx.rel_gap = rel_gap
        return eigenvalues, eigenvectors

    @staticmethod
    def backward(ctx, g_values: torch.Tensor | None, g_vectors: torch.Tensor | None):  # type: ignore[override]
        values, vectors = ctx.saved_tensors
        inner = torch.zeros_like(vectors)
        if g_vectors is not None:
            gap = values.unsqueeze(-2) - values.unsqueeze(-1)  # gap[a, b] = lambda_b - lambda_a
            scale = values.abs().amax(dim=-1, keepdim=True).unsqueeze(-1).clamp_min(torch.finfo(values.dtype).tiny)
            resolved = gap.abs() > ctx.rel_gap * scale
            inv_gap = torch.where(resolved, 1.0 / torch.where(resolved, gap, torch.ones_like(gap)), 0.0)
            inner = (vectors.mT @ g_vectors) * inv_gap
        if g_values is not None:
            inner = inner + torch.diag_embed(g_values)
        grad = vectors @ inner @ vectors.mT
        return 0.5 * (grad + grad.mT), None


def safe_eigh(a: torch.Tensor, rel_gap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.linalg.eigh` (ascending eigenvalues) with a backward that is finite for repeated eigenvalues.

    rel_gap: eigenvalue gaps below rel_gap * max|lambda| count as ties; default 1e3 * machine epsilon.
    """
    if rel_gap is None:
        rel_gap = 1e3 * torch.finfo(a.dtype).eps
    return _SafeEigh.apply(a, rel_gap)
