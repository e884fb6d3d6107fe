"""Proposition 1 and Remark 1 of the paper (Section 3.5), checked numerically.

The toy model: a unit weight vector w in R^5 and five unit feature directions f_1..f_5, the first four
natural (w^T f_i in (beta, 1)), the fifth the trigger's (w^T f_5 in (-1, -beta)). A sample's feature is
z = sum_i alpha_i f_i with alpha_i >= 0, sum alpha_i = 1, and the model predicts the natural class when
w^T z > 0, the target class otherwise.

Proposition 1: sum_{i<=4} alpha_i > 1 / (1 + beta) guarantees the natural class. The paper proves it from
the worst case (w^T f_i = beta for i <= 4, w^T f_5 = -1), where the condition is also necessary.
Remark 1: EigenGuard with k = 5 gives the five directions equal weight, alpha_i = 1/5, so
sum_{i<=4} alpha_i = 0.8, and the guarantee holds exactly when 0.8 > 1 / (1 + beta), i.e. beta > 0.25.

`check_proposition` draws w, f_1..f_5 meeting the constraints and random alpha, and counts:
- violations of sufficiency: draws meeting the condition yet predicted as the target (must be 0);
- in the worst case, disagreements between the condition and the prediction (must be 0: necessary too);
- and, for contrast, draws that miss the condition yet are predicted natural (the bound is not tight for
  a random draw, only for the worst case).
`check_remark` evaluates the worst case at alpha_i = 1/5 over a grid of beta.
"""

import numpy as np


def unit_with_projection(w: np.ndarray, projection: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector f with w^T f = projection (w a unit vector), random otherwise."""
    v = rng.standard_normal(w.shape)
    v -= (v @ w) * w
    v /= np.linalg.norm(v)
    return projection * w + np.sqrt(max(0.0, 1.0 - projection**2)) * v


def check_proposition(
    beta: float, trials: int = 100_000, seed: int = 0, threshold: float | None = None
) -> dict[str, float | int]:
    """Count how draws agree with the condition sum_{i<=4} alpha_i > threshold (default: the paper's
    1 / (1 + beta); another value shows what a wrong bound looks like)."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta {beta} must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    threshold = 1.0 / (1.0 + beta) if threshold is None else threshold
    violations = worst_disagreements = loose = met = 0
    for _ in range(trials // 1000):
        w = rng.standard_normal(5)
        w /= np.linalg.norm(w)
        projections = np.concatenate([rng.uniform(beta, 1.0, 4), [rng.uniform(-1.0, -beta)]])
        f = np.stack([unit_with_projection(w, p, rng) for p in projections])  # (5, 5): rows f_i
        assert np.allclose(f @ w, projections) and np.allclose(np.linalg.norm(f, axis=1), 1.0)
        # alpha: half uniform on the simplex, half pushed towards the trigger direction (the hard cases)
        alpha = rng.dirichlet(np.ones(5), 1000)
        alpha[500:] = rng.dirichlet([1, 1, 1, 1, 8], 500)
        natural_share = alpha[:, :4].sum(axis=1)
        condition = natural_share > threshold
        natural = (alpha @ f) @ w > 0
        violations += int((condition & ~natural).sum())
        loose += int((~condition & natural).sum())
        met += int(condition.sum())
        worst = alpha @ np.array([beta, beta, beta, beta, -1.0])  # w^T z at the worst-case projections
        decided = np.abs(natural_share - threshold) > 1e-12  # the boundary itself is a tie
        worst_disagreements += int(((worst > 0) != condition)[decided].sum())
    return {
        "beta": beta,
        "threshold": round(threshold, 6),
        "draws": trials // 1000 * 1000,
        "draws_meeting_condition": met,
        "sufficiency_violations": violations,
        "worst_case_disagreements": worst_disagreements,
        "natural_without_condition": loose,
    }


def check_remark(betas: np.ndarray | None = None) -> list[dict[str, float | bool]]:
    """Worst case at alpha_i = 1/5 (EigenGuard, k = 5): natural iff beta > 0.25."""
    betas = np.linspace(0.05, 0.95, 19) if betas is None else betas
    rows = []
    for beta in betas:
        output = 0.8 * beta - 0.2  # sum_{i<=4} alpha_i * beta + alpha_5 * (-1)
        rows.append({"beta": round(float(beta), 4), "worst_case_output": round(float(output), 6),
                     "natural": bool(output > 0), "remark_predicts_natural": bool(beta > 0.25)})  # fmt: skip
    return rows
