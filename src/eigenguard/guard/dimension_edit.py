"""Figure 1's intervention: remove the top singular directions of the batch features, or lift small ones.

Section 3.2 of the paper trains ResNet-18 while "setting the top singular values of features SVD
decomposition to 0" (reduce dimensions) or "lifting the original small singular values" (add dimensions)
after the first residual stage, at training and at test time. It gives no formula; ours, per batch of
features F (B rows, flattened) with SVD F = U diag(s) V^T, s descending:

* reduce r: s_1 .. s_r set to 0: F minus its projection on the top r left singular vectors;
* add r: s_2 .. s_{r+1} lifted to s_1, the others kept: r more directions carry as much energy as the top
  one (a direction whose s_i is numerically zero stays zero: it has no feature to lift).

Both are computed from the B x B Gram matrix (as EigenGuard's fast path), and the gradient flows through F
with the singular vectors held constant. Like the paper's experiment, the edit acts on whatever batch it
is given, at test time too: results depend on the evaluation batch (clean batches for ACC, all-triggered
batches for ASR, the paper protocol; analysis/dims_sweep.py adds mixed batches and the edit switched off
at test time). An analysis tool, not a defense: it sits beside the guard because it is a layer built
from the same decomposition, inserted by `--defense dimension-edit`.
"""

from typing import Literal, get_args

import torch
from torch import nn

from eigenguard.errors import EigenguardError

Mode = Literal["reduce", "add"]
MODES: tuple[str, ...] = get_args(Mode)


class DimensionEdit(nn.Module):
    def __init__(self, mode: Mode = "reduce", r: int = 0) -> None:
        super().__init__()
        if mode not in MODES:
            raise EigenguardError(f"dimension edit mode '{mode}' unknown; allowed: {', '.join(MODES)}")
        if r < 0:
            raise EigenguardError(f"dimension edit r {r} must be >= 0")
        self.mode, self.r = mode, int(r)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, r={self.r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r == 0:
            return x
        with torch.autocast(x.device.type, enabled=False):
            flat = x.flatten(1).float()
            out = flat + edit_directions(flat.detach(), self.mode, self.r) @ flat
        return out.view_as(x).to(x.dtype)


def edit_directions(flat: torch.Tensor, mode: str, r: int) -> torch.Tensor:
    """The B x B matrix M with edited F = F + M F (computed in float64 from the Gram matrix)."""
    gram = flat.double() @ flat.double().T
    values, vectors = torch.linalg.eigh(gram)  # ascending
    values, vectors = values.flip(0), vectors.flip(1)  # descending: s_i^2 and u_i
    eps = torch.finfo(torch.float64).eps
    valid = values > 10 * len(values) * eps * values[0].clamp_min(0)
    if mode == "reduce":
        scale = torch.zeros_like(values)
        scale[: min(r, len(values))] = -1.0  # s_i -> 0
    else:
        s = values.clamp_min(0).sqrt()
        scale = torch.zeros_like(values)
        lift = torch.zeros_like(valid)
        lift[1 : r + 1] = True
        lift &= valid
        scale[lift] = s[0] / s[lift] - 1.0  # s_i -> s_1
    return ((vectors * scale) @ vectors.T).to(flat.dtype)
