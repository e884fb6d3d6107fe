"""Per-sample inference through the secular equation: the same filter as the dense eigh path, on every input
that breaks eigen-solvers (low rank, repeated and clustered values, zeros, x inside or outside the history's
span, extreme scales), batch independent, cached by the guard exactly as long as its history is unchanged."""

import pytest
import torch

from eigenguard.guard import EigenGuard
from eigenguard.guard.spectral_filter import SPECTRA, _filter_ratio, filter_each_against, frozen_history

D64 = torch.float64


def cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=D64)

    h = randn(12, 40)
    eye = torch.eye(40, dtype=D64)
    return {
        "random": (h, randn(5, 40)),
        "low-rank history": (randn(12, 3) @ randn(3, 40), randn(5, 40)),
        "x in the history's span": (h, randn(5, 12) @ h),
        "x a history row": (h, h[:4].clone()),
        "x zero": (h, torch.zeros(3, 40, dtype=D64)),
        "x mixed zero and not": (h, torch.cat([torch.zeros(1, 40, dtype=D64), randn(2, 40)])),
        "equal singular values": (torch.cat([2 * eye[:6], randn(4, 40)]), randn(5, 40)),
        "clustered singular values": (h * (1 + 1e-10 * torch.arange(12, dtype=D64))[:, None], randn(5, 40)),
        "zero history rows": (torch.cat([torch.zeros(2, 40, dtype=D64), randn(8, 40)]), randn(5, 40)),
        # (x's norm differs from the history's: with all eleven values equal, "the top k" would be arbitrary)
        "orthogonal to the history": (torch.cat([eye[:10], torch.zeros(2, 40, dtype=D64)]), 3 * eye[20:23]),
        "x huge": (h, 1e4 * randn(5, 40)),
        "x tiny": (h, 1e-9 * randn(5, 40)),
        "one history row": (randn(1, 40), randn(5, 40)),
        "relu features": (torch.relu(randn(12, 40)) + 0.5, torch.relu(randn(5, 40)) + 0.5),
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("k", [1, 4, 30])
@pytest.mark.parametrize("spectrum", SPECTRA)
def test_secular_path_equals_dense_eigh(name: str, k: int, spectrum: str) -> None:
    history, x = cases()[name]
    dense = filter_each_against(history, x, k=k, spectrum=spectrum, solver="eigh")
    fast = filter_each_against(history, x, k=k, spectrum=spectrum)
    assert torch.isfinite(fast).all()
    if dense.abs().max() == 0:
        assert fast.abs().max() == 0
    else:
        # the dense eigh's own error is ~ eps * lambda_max / lambda: 1e-8 where x dwarfs the history's values
        assert rel_err(fast, dense) < (1e-6 if name in ("x huge", "x tiny") else 1e-9), name


def test_float32_is_at_least_as_exact_as_the_dense_float32_path() -> None:
    # the float64 reference with float32's zero-direction threshold (the definition at float32 precision)
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(300, 64, generator=g, dtype=D64))[0]
    history = (torch.randn(64, 64, generator=g, dtype=D64) * torch.logspace(0, -2.5, 64, dtype=D64)) @ basis.T
    x = torch.randn(16, 64, generator=g, dtype=D64) @ basis.T + 0.1 * torch.randn(16, 300, generator=g, dtype=D64)
    eps32 = torch.finfo(torch.float32).eps
    reference = _reference(history, x, 20, eps32)
    fast = filter_each_against(history.float(), x.float(), k=20).double()
    dense = filter_each_against(history.float(), x.float(), k=20, solver="eigh").double()
    assert rel_err(fast, reference) < 1e-4
    assert rel_err(fast, reference) <= max(rel_err(dense, reference), 1e-5)


def _reference(history: torch.Tensor, x: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """The dense float64 path with the threshold of another precision: each row's bordered Gram decomposed."""
    out = []
    for row in x:
        feat = torch.cat([history, row[None]])
        values, vectors = torch.linalg.eigh(feat @ feat.T)
        values, vectors = values.flip(-1), vectors.flip(-1)
        ratio = _filter_ratio(values, k, 1e-3, len(feat), "paper", eps)
        out.append(((vectors[-1] * ratio) @ vectors.T) @ feat)
    return torch.stack(out)


def test_batch_independent_and_nan_stays_local() -> None:
    history, x = cases()["random"]
    together = filter_each_against(history, x, k=4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(filter_each_against(history, x[perm], k=4), together[perm], atol=1e-13)
    assert torch.allclose(filter_each_against(history, x[2:3], k=4), together[2:3], atol=1e-13)
    broken = x.clone()
    broken[1, 0] = float("nan")
    out = filter_each_against(history, broken, k=4)
    assert torch.isnan(out[1]).all()
    assert torch.allclose(out[[0, 2, 3, 4]], together[[0, 2, 3, 4]], atol=1e-13)


def test_only_the_roots_above_the_threshold_are_solved() -> None:
    g = torch.Generator().manual_seed(2)
    history = torch.randn(20, 4, generator=g, dtype=D64) @ torch.randn(4, 50, generator=g, dtype=D64)
    frozen = frozen_history(history)
    assert frozen.first == 16 and len(frozen.lo) == 5  # 4 nonzero directions + the one above them
    x = torch.randn(6, 50, generator=g, dtype=D64)
    dense = filter_each_against(history, x, k=2, solver="eigh")
    assert rel_err(filter_each_against(history, x, k=2, frozen=frozen), dense) < 1e-10


def test_guard_caches_the_history_decomposition_until_the_history_changes() -> None:
    g = torch.Generator().manual_seed(4)
    guard = EigenGuard(k=3).train()
    guard(torch.randn(8, 2, 3, 3, generator=g))
    guard.eval()
    x = torch.randn(5, 2, 3, 3, generator=g)

    def dense() -> torch.Tensor:
        return filter_each_against(guard.history, x.flatten(1), k=3, solver="eigh").view_as(x)

    out = guard(x)
    assert torch.allclose(out, dense(), atol=1e-5)
    first = guard._frozen
    guard(x)
    assert guard._frozen is first  # reused
    guard.train()(torch.randn(8, 2, 3, 3, generator=g))  # an in-place update of His
    guard.eval()
    assert torch.allclose(guard(x), dense(), atol=1e-5)
    assert guard._frozen is not first
    other = EigenGuard(k=3).train()
    other(torch.randn(8, 2, 3, 3, generator=g))
    guard.load_state_dict(other.state_dict())
    assert torch.allclose(guard(x), dense(), atol=1e-5)
    guard.history.mul_(2.0)  # a user's in-place edit
    assert torch.allclose(guard(x), dense(), atol=1e-5)
    guard.reset_history()
    assert guard._frozen is None
