"""How much of a trigger gets through the guard, compared with how much of the clean images does.

For a guarded model and test images that the backdoor would flip, take the features at the guard's input
for each image clean (f) and with the trigger (f~), and the guard's per-sample outputs for both (g, g~).
The trigger's change at the input is d = f~ - f, at the output d' = g~ - g; the clean images' variation is
f - mean(f) at the input and g - mean(g) at the output. Two questions, each answered as energy shares
(sums of squared norms over the images, so a share is a fraction of the total, not a mean of ratios):

* where it lives: the share of d, and of the clean variation, in the span of the top k right singular
  vectors of the guard's history His, the directions the filter keeps (every other direction is shrunk to
  floor * sigma_k). His's decomposition stands in for each image's own [His; x] (one row among m + 1).
* what passes: ||d'||^2 / ||d||^2 against the same ratio for the clean variation. Their square-rooted
  quotient, `trigger_vs_clean_gain`, is how much more (> 1) or less (< 1) of the trigger than of the clean
  content reaches the next layer. A filter that removes a trigger has it far below 1.
  Per-sample, an image's own row adds a direction to the decomposition: the part of it outside His's span
  becomes a singular direction of its own, kept if it is larger than sigma_k. So the measure is also taken
  the way training sees a trigger (`batch_*`): batches of the run's batch size in the guard's batch mode,
  [His; batch], with the poisoned share of each batch's images triggered (the rest clean), d' taken on
  those rows between the triggered batch and the all-clean one.

docs/results/eigenguard-study.md uses it to ask why Blend survives the filter and BadNets does not.
"""

from typing import Any

import torch


def top_right_singular_vectors(history: torch.Tensor, k: int) -> torch.Tensor:
    """(D, k') orthonormal columns spanning the top k' = min(k, rank) right singular directions of
    `history` (m x D), from its m x m Gram matrix in float64."""
    h = history.double()
    eigenvalues, u = torch.linalg.eigh(h @ h.mT)
    eigenvalues, u = eigenvalues.flip(0), u.flip(1)
    keep = eigenvalues > 10 * len(h) * torch.finfo(h.dtype).eps * eigenvalues[:1].clamp_min(0)
    k = min(k, int(keep.sum()))
    v = h.mT @ u[:, :k] / eigenvalues[:k].sqrt()  # V = H^T U diag(1/s)
    return v


def share_in(rows: torch.Tensor, basis: torch.Tensor) -> float:
    """The share of the rows' total squared norm that lies in the span of `basis`' orthonormal columns."""
    total = rows.double().square().sum()
    inside = (rows.double() @ basis).square().sum()
    return float(inside / total) if total > 0 else float("nan")


def survival(
    clean_in: torch.Tensor,
    triggered_in: torch.Tensor,
    clean_out: torch.Tensor,
    triggered_out: torch.Tensor,
    history: torch.Tensor,
    k: int,
    batch_clean_out: torch.Tensor | None = None,
    batch_mixed_out: torch.Tensor | None = None,
    mixed_rows: torch.Tensor | None = None,
    other_ks: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The measures of the module docstring for N images' (N x D) features, flattened. The batch measure:
    the guard's batch-mode outputs of the clean images and of the same batches with `mixed_rows` triggered.
    `other_ks`: the two shares also for the top K of His for each K given (`shares_in_top`: K -> the pair),
    where the trigger would live for a guard with another k (the same trained features)."""
    basis = top_right_singular_vectors(history, k)
    trigger_in, trigger_out = (triggered_in - clean_in).double(), (triggered_out - clean_out).double()
    clean_var_in = (clean_in - clean_in.mean(0)).double()
    clean_var_out = (clean_out - clean_out.mean(0)).double()
    trigger_passed = float(trigger_out.square().sum() / trigger_in.square().sum())
    clean_passed = float(clean_var_out.square().sum() / clean_var_in.square().sum())
    batch: dict[str, float] = {}
    if batch_clean_out is not None and batch_mixed_out is not None and mixed_rows is not None:
        moved = (batch_mixed_out - batch_clean_out)[mixed_rows].double()
        batch_var_out = (batch_clean_out - batch_clean_out.mean(0)).double()
        passed = float(moved.square().sum() / trigger_in[mixed_rows].square().sum())
        clean_batch = float(batch_var_out.square().sum() / clean_var_in.square().sum())
        batch = {
            "batch_trigger_passed": passed,
            "batch_clean_passed": clean_batch,
            "batch_trigger_vs_clean_gain": (passed / clean_batch) ** 0.5 if clean_batch > 0 else float("nan"),
        }
    return {
        "k": basis.shape[1],
        "trigger_share_in_top_k": share_in(trigger_in, basis),
        "clean_share_in_top_k": share_in(clean_var_in, basis),
        "trigger_passed": trigger_passed,
        "clean_passed": clean_passed,
        "trigger_vs_clean_gain": (trigger_passed / clean_passed) ** 0.5 if clean_passed > 0 else float("nan"),
        "trigger_to_clean_norm_in": float(trigger_in.norm() / clean_var_in.norm()),
        **batch,
        "shares_in_top": {
            str(kk): {"trigger": share_in(trigger_in, b), "clean": share_in(clean_var_in, b), "k": b.shape[1]}
            for kk in other_ks
            for b in [top_right_singular_vectors(history, kk)]
        },
    }
