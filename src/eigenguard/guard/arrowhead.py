"""Per-sample filtering against a frozen history in O(p m) per image: the bordered Gram matrix as an
arrowhead matrix, its eigenvalues from the secular equation.

Per-sample inference filters an image x (one row of D features) as the last row of [H; x], H the frozen
history (m x D). Its Gram matrix is bordered, [[H H^T, H x^T], [x H^T, x x^T]]. With H H^T = Q diag(l) Q^T
decomposed once per history (`FrozenHistory`), the change of basis diag(Q, 1) turns it into an arrowhead
matrix [[diag(l), z], [z^T, d]] with z = Q^T H x^T and d = x x^T. Its eigenvalues are the roots of the
secular equation

    F(t) = d - t + sum_j z_j^2 / (t - l_j) = 0,

one between each pair of consecutive poles l_j (Cauchy interlacing), one above the largest; the eigenvector
of root t is [z / (t - l); 1] / sqrt(N) with N = 1 + sum_j z_j^2 / (t - l_j)^2 = -F'(t). The filter needs
only the last row of U diag(r) U^T (r_i = s'_i / s_i), which in this basis is

    w_last = sum_i r_i / N_i,        w_j = z_j sum_i (r_i / N_i) / (t_i - l_j),

mapped back by Q; the output row is (Q w) H + w_last x, as in the dense path. No (m+1) x (m+1) matrix is
formed or decomposed per image.

Only p + 1 roots are computed: the top root and those below the p poles l_j above 10 n eps l_max. Every
other root is at most such a pole, hence numerically zero by the filter's own definition (r = 0), and
contributes nothing. A trained history is far from full rank (the quick profile's: p = 64 of m = 256).
On a CPU the images go in chunks that keep the (roots x images x poles) work arrays cache-sized.

Numerics, in float64 whatever the guard's precision (the per-image problem is small):
- each root is found as an offset u from the nearer pole of its interval (the side is chosen by the sign
  of F at the midpoint, as LAPACK's dlaed4 does), so t - l_j = (l_j' - l_origin) - u loses no digits even
  when the root is within rounding of a pole;
- each step solves a rational model of F matched in value and slope at the iterate: the poles on the
  origin's side as one pole at the origin, everything else (the other poles and the linear term d - t)
  as its tangent line; a quadratic, quadratically convergent. (Bunch, Nielsen and Sorensen's two-pole
  model, as in dlaed4, would fold d - t into the far pole's weight, which cancels catastrophically when
  the interval is wide.) A step that leaves the interval known to hold the root is replaced by
  bisection, so it always converges; a root is done when |F| is below the rounding of its terms.
  Typically 5 steps; the last few stragglers iterate as a compact list;
- a zero z_j (x orthogonal to a history direction; x = 0) is raised to (eps^2 scale) instead of deflated:
  the root then sits within rounding of l_j and its weight vanishes as its exact limit does, so no index
  bookkeeping varies per image; two equal poles leave a zero-width interval whose root is the pole itself
  with weight 0 (its eigenvector has no last component).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

F64 = torch.float64
CHUNK_ELEMENTS = 1 << 20  # (roots x images x poles) per chunk on a CPU: 8 MB of float64, cache-sized
_EPS = torch.finfo(F64).eps


@dataclass(frozen=True)
class FrozenHistory:
    """What per-sample inference needs from a frozen (normalized) history h (m x D), computed once.

    poles: the eigenvalues l of h h^T, ascending (float64); basis: their eigenvectors Q (m x m, float64).
    The roots computed are those of intervals first..m, interval i being (l_{i-1}, l_i) with l_{-1} and l_m
    replaced by bounds of the spectrum set per image. For each: lower and upper pole (lo, hi) and the
    interval's width (0 for the open-ended ones, set per image); empty: the interior intervals of width 0
    (two equal poles: the root is the pole, with weight 0). Poles 0..first-1 lie below every computed
    root; of the others, below[i, j] = 1 where pole first + j lies below root i's interval (a triangle).
    scale: the power of two the history was normalized by (images are scaled by the same).
    """

    h: torch.Tensor
    poles: torch.Tensor
    basis: torch.Tensor
    first: int
    lo: torch.Tensor
    hi: torch.Tensor
    width: torch.Tensor
    empty: torch.Tensor
    below: torch.Tensor
    scale: torch.Tensor

    @staticmethod
    def of(h: torch.Tensor, threshold: float, scale: torch.Tensor) -> "FrozenHistory":
        """h: the normalized history; threshold: the filter's zero-direction threshold relative to the
        largest eigenvalue (10 n eps); scale: what h was normalized by."""
        m = h.shape[0]
        poles, basis = torch.linalg.eigh((h @ h.mT).to(F64))
        # A root in interval i is at most l_i: it can pass the threshold only if l_i > threshold * l_max.
        above = (poles > threshold * poles[-1].clamp_min(0)).nonzero()
        first = int(above[0, 0]) if len(above) else m
        intervals = torch.arange(first, m + 1, device=h.device)
        lo, hi = poles[(intervals - 1).clamp_min(0)], poles[intervals.clamp_max(m - 1)]
        interior = (intervals >= 1) & (intervals <= m - 1)
        width = torch.where(interior, hi - lo, torch.zeros_like(lo))
        below = (torch.arange(first, m, device=h.device)[None, :] < intervals[:, None]).to(F64)
        return FrozenHistory(h, poles, basis, first, lo, hi, width, interior & (width == 0), below, scale)


def _model_step(
    f: torch.Tensor, below2: torch.Tensor, above2: torch.Tensor, u: torch.Tensor, from_hi: torch.Tensor
) -> torch.Tensor:
    """The next offset from the origin pole. The model replaces the poles on the origin's side by one pole
    at the origin and everything else by its tangent line at u:  F(t') ~ A + W / u' - s (u' - u), with
    W = -(their part of F') u^2 and s = -(the rest of F'); its step is the root, on the origin's side, of
    the quadratic s u'^2 - alpha u' - W = 0 (why not two poles: the module docstring).
    below2 / above2: sum of z2 / (l - t)^2 over the poles below / above the root's interval."""
    weight = torch.where(from_hi, above2, below2) * u.square()
    slope = 1 + torch.where(from_hi, below2, above2)
    alpha = f - weight / u + slope * u
    r = (alpha.square() + 4 * slope * weight).sqrt()
    up = torch.where(alpha > 0, (alpha + r) / (2 * slope), 2 * weight / (r - alpha))  # the positive root
    down = torch.where(alpha < 0, (alpha - r) / (2 * slope), -2 * weight / (r + alpha))  # the negative root
    return torch.where(from_hi, down, up)


def secular_roots(
    frozen: FrozenHistory, z2: torch.Tensor, d: torch.Tensor, max_steps: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """The wanted roots of F(t) = d - t + sum_j z2_j / (t - l_j) for each image (z2: b x m, d: b, float64).

    Returns (t, den): the roots (count x b, ascending in the first dim) and den[i, b, j] = l_j - t_ib.
    All roots iterate together until three in four have converged; the rest continue as a compact list.
    """
    m, count, b = frozen.poles.shape[0], frozen.lo.shape[0], z2.shape[0]
    index = torch.arange(frozen.first, m + 1, device=z2.device)[:, None]
    top, bottom = index == m, index == 0  # (count, 1): open above / open below
    interior = ~(top | bottom)
    # Weyl: every eigenvalue lies in [min(l_0, d) - |z|, max(l_max, d) + |z|]
    znorm, slack = z2.sum(1).sqrt()[None, :], 1 + 1e-12
    width = torch.where(top, (torch.maximum(frozen.poles[-1], d) + znorm) * slack - frozen.poles[-1], 0.0)
    width = torch.where(bottom, frozen.poles[0] - (torch.minimum(frozen.poles[0], d) - znorm * slack), width)
    width = torch.where(interior, frozen.width[:, None], width).clamp_min(0)  # (count, b)

    first = frozen.first

    def split(q: torch.Tensor, below: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sum over the poles below the root's interval, sum over all (the last dim)."""
        low, high = q[..., :first].sum(-1), q[..., first:]
        return low + (high * below).sum(-1), low + high.sum(-1)

    def sums(shift: torch.Tensor, u: torch.Tensor, z2: torch.Tensor, below: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """F's sums at t = origin + u: sum_j z2/(l_j - t) over the poles below and over all, and the same
        for z2/(l_j - t)^2. shift: l_j - origin; below: the mask of the poles first.. below each root."""
        inv = torch.sub(shift, u.unsqueeze(-1)).reciprocal_()
        q = z2 * inv
        sb, sa = split(q, below)
        s2b, s2a = split(q.mul_(inv), below)
        return sb, sa, s2b, s2a

    # The interval's midpoint: the sign of F there says which half holds the root; the nearer pole of
    # that half becomes the origin (the bottom interval measures from its upper pole, the top from its lower).
    start = torch.where(bottom, frozen.hi[:, None], frozen.lo[:, None]).expand(count, b)
    mid = torch.where(bottom, -width / 2, width / 2)
    below = frozen.below[:, None, :]  # (count, 1, m - first)
    sb, sa, s2b, s2a = sums(frozen.poles - start.unsqueeze(-1), mid, z2.unsqueeze(0), below)
    f = (d - start - mid) - sa
    right = f > 0  # F decreases: the root is above the midpoint
    from_hi = bottom | (interior & right)
    origin = torch.where(from_hi, frozen.hi[:, None], frozen.lo[:, None])
    shift = frozen.poles - origin.unsqueeze(-1)  # l_j - origin, exact differences (count, b, m)
    u = torch.where(from_hi, -width / 2, width / 2)  # the midpoint again, from the new origin
    u = torch.where(bottom, mid, u)
    lo_u = torch.where(from_hi, torch.where(right, -width / 2, -width), torch.where(right, width / 2, 0.0))
    hi_u = torch.where(from_hi, torch.where(right, 0.0, -width / 2), torch.where(right, width, width / 2))
    done = width == 0  # equal poles: the root is the pole
    from_hi = from_hi.expand(count, b)

    def advance(f, sb, sa, s2b, s2a, u, lo_u, hi_u, from_hi, done, d_origin):
        psi = -sb  # the poles below: sum z2 / (t - l) >= 0
        # F is known to rounding of the sum of its terms' magnitudes: below that, u is a root
        settled = f.abs() <= 16 * _EPS * (psi + (sa - sb) + (d_origin - u).abs())
        lo_u = torch.where(f > 0, u, lo_u)
        hi_u = torch.where(f < 0, u, hi_u)
        step = _model_step(f, s2b, s2a - s2b, u, from_hi)
        ok = (step > lo_u) & (step < hi_u)  # NaN compares False
        new = torch.where(done | settled, u, torch.where(ok, step, (lo_u + hi_u) / 2))
        stalled = (new - u).abs() <= 4 * _EPS * torch.maximum(new.abs(), u.abs())
        closed = (hi_u - lo_u) <= 4 * _EPS * torch.maximum(lo_u.abs(), hi_u.abs())
        broken = ~torch.isfinite(f)  # a NaN or inf input: no root to find, the output is NaN as in eigh
        return new, lo_u, hi_u, done | settled | stalled | closed | broken

    d_origin = d - origin  # (count, b)
    steps = 0
    while steps < max_steps:
        u, lo_u, hi_u, done = advance(f, sb, sa, s2b, s2a, u, lo_u, hi_u, from_hi, done, d_origin)
        steps += 1
        if 4 * int(done.sum()) >= 3 * done.numel():
            break
        sb, sa, s2b, s2a = sums(shift, u, z2.unsqueeze(0), below)
        f = (d_origin - u) - sa
    # the stragglers, as a list: their own shifts, weights and pole masks
    rows = (~done).nonzero(as_tuple=True)
    if len(rows[0]):
        su, slo, shi, sdone = u[rows], lo_u[rows], hi_u[rows], done[rows]
        sfrom, sd = from_hi[rows], d_origin[rows]
        rshift, rz2, rbelow = shift[rows], z2[rows[1]], frozen.below[rows[0]]
        while steps < max_steps and not bool(sdone.all()):
            sb, sa, s2b, s2a = sums(rshift, su, rz2, rbelow)
            f = (sd - su) - sa
            su, slo, shi, sdone = advance(f, sb, sa, s2b, s2a, su, slo, shi, sfrom, sdone, sd)
            steps += 1
        u = u.index_put(rows, su)
    return origin + u, shift.sub_(u.unsqueeze(-1))


def bordered_weights(
    frozen: FrozenHistory, xs: torch.Tensor, ratio: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row x of xs (b x D, normalized like the history): the last row of U diag(r) U^T of the
    bordered Gram of [h; x], as (weights of the history rows, b x m; weight of x, b). ratio: eigenvalues
    (b x count, descending) -> r (the filter's rule, with n = m + 1)."""
    z = (xs @ frozen.h.mT).to(F64) @ frozen.basis  # (b, m)
    d = xs.to(F64).square().sum(1)
    scale = torch.maximum(frozen.poles[-1].abs(), d).clamp_min(torch.finfo(F64).tiny)
    z2 = torch.maximum(z.square(), (_EPS * _EPS) * scale[:, None])  # no exact zero: see the module docstring
    empty = frozen.empty[:, None]
    # images in chunks of CHUNK_ELEMENTS (roots x images x poles) float64: the iteration's passes stay in cache
    m, count = frozen.poles.shape[0], frozen.lo.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // (count * m)) if z.device.type == "cpu" else len(z)
    w = torch.empty_like(z)
    w_last = torch.empty_like(d)
    for s in range(0, len(z), chunk):
        part = slice(s, s + chunk)
        t, den = secular_roots(frozen, z2[part], d[part])  # (count, chunk), ascending in count
        r = ratio(t.flip(0).mT).flip(-1).mT  # (count, chunk), ascending again
        inv = den.reciprocal_().masked_fill_(empty.unsqueeze(-1), 0.0)  # an empty interval's root is a pole
        g = r / (1 + torch.einsum("ibj,bj->ib", inv.square(), z2[part]))  # r_i / N_i
        g = torch.where(empty, torch.zeros_like(g), g)
        w_last[part] = g.sum(0)
        w[part] = -z[part] * torch.einsum("ib,ibj->bj", g, inv)  # z_j sum_i g_i / (t_i - l_j)
    return w @ frozen.basis.mT, w_last
