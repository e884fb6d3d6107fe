"""Effective rank of a feature matrix (Table 2 of the paper).

The matrix: N images' features at one insertion point, each flattened to a row: A is N x D with
D = channels x height x width (ResNet-18's first stage on 28 x 28 Fashion-MNIST at width 0.25:
16 x 28 x 28 = 12,544). Not centred: the paper decomposes the features themselves.

Two definitions, both from the singular values s_i of A and p_i = s_i / sum_j |s_j|:
* "entropy" -- Eq. 1 exactly as printed in the paper: ERank(A) = -sum_i p_i log p_i, in nats. Its values
  are logs of a dimension (Table 2 reports 2.7 to 4.4, i.e. e^2.7 = 15 to e^4.4 = 81 directions).
* "roy" -- Roy & Vetterli (2007), whom the paper cites: exp(-sum_i p_i log p_i), a number of dimensions
  between 1 and rank(A).
Terms with p_i = 0 contribute 0 (the limit of p log p).
"""

import torch

from eigenguard.errors import EigenguardError

DEFINITIONS = {
    "entropy": "ERank = -sum p_i log p_i (the paper's Eq. 1 as printed; nats)",
    "roy": "ERank = exp(-sum p_i log p_i) (Roy & Vetterli 2007; dimensions)",
}


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of an N x D matrix, descending, in float64, from the smaller of its two Gram matrices
    (an N x N eigenproblem for N images and D >> N features: seconds where a full SVD takes minutes on CPU).
    Squaring loses singular values below ~1e-8 of the largest (they weigh nothing in p_i = s_i / sum s_j);
    those at rounding level are returned as 0."""
    a = matrix.double()
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    values = torch.linalg.eigvalsh(gram).flip(0)
    # eigenvalues at rounding level are zero singular values: their square roots (~1e-8 s_1) are noise
    noise = len(values) * torch.finfo(values.dtype).eps * values[:1].clamp_min(0)
    return torch.where(values > noise, values, torch.zeros_like(values)).sqrt()


def effective_rank(matrix: torch.Tensor, definition: str = "entropy") -> float:
    """Effective rank of a 2-D matrix under `definition` ("entropy" or "roy")."""
    if definition not in DEFINITIONS:
        raise EigenguardError(f"effective rank definition '{definition}' unknown; allowed: {', '.join(DEFINITIONS)}")
    if matrix.dim() != 2:
        raise EigenguardError(
            f"effective rank needs a 2-D matrix (N images x D features), got shape {tuple(matrix.shape)}"
        )
    s = singular_values(matrix)
    total = s.abs().sum()
    if total == 0:
        return 0.0 if definition == "entropy" else 1.0
    p = s / total
    entropy = float(-(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum())
    return entropy if definition == "entropy" else float(torch.exp(torch.tensor(entropy)))
