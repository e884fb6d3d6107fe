"""SPECTRE (detectors/spectre.py) on synthetic features: a shifted cluster of poisons inside one class of
heavy-tailed rows, clean classes beside it."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eigenguard.data.transforms import Normalize
from eigenguard.detectors.base import DetectionContext
from eigenguard.detectors.spectre import Spectre, robust_keep
from eigenguard.errors import EigenguardError
from eigenguard.models.resnet import resnet18

N, D, P = 200, 16, 20  # images per class, feature dimensions, poisons (in class 1)


def student_t(g: torch.Generator, n: int, d: int, df: int = 5) -> torch.Tensor:
    """Heavy-tailed rows: a Gaussian over sqrt(chi^2_df / df)."""
    chi2 = torch.randn(n, df, generator=g).square().sum(1, keepdim=True)
    return torch.randn(n, d, generator=g) * (df / chi2).sqrt()


def three_classes(seed: int, poisoned: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of 3 classes of N with unequal scales per dimension; class 1's first P rows, if poisoned, a tight
    cluster shifted along three of them (as a trigger moves poisons in feature space)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3, 0.5, D)
    rows = student_t(g, 3 * N, D) * scales
    labels = torch.arange(3 * N) // N
    poison = torch.arange(N, N + P)
    if poisoned:
        shift = torch.zeros(D)
        shift[[2, 5, 9]] = torch.tensor([8.0, -8.0, 8.0])
        rows[poison] = (0.5 * torch.randn(P, D, generator=g) + shift) * scales
    return rows, labels, poison


@pytest.mark.parametrize("seed", [0, 1])
def test_poisons_are_flagged_rank_first_and_name_their_class(seed: int) -> None:
    rows, labels, poison = three_classes(seed)
    detection = Spectre(epsilon=P / len(labels)).filter(rows, labels, 3)
    assert detection.scores.dtype == torch.float64 and detection.scores.shape == (len(labels),)
    assert detection.flagged.dtype == torch.int64 and bool((detection.flagged.diff() > 0).all())
    assert set(poison.tolist()) <= set(detection.flagged.tolist())
    # round(1.5 eps_c) of the class that looks like the target, eps_c = epsilon N = P; none elsewhere
    assert (labels[detection.flagged] == 1).all() and len(detection.flagged) == round(1.5 * P)
    order = detection.scores.argsort(descending=True)
    assert sorted(order[:P].tolist()) == poison.tolist()  # first of all
    scores = detection.class_scores
    assert scores.argmax() == 1 and scores[1] > 1.2 * max(scores[0], scores[2])
    assert detection.report["classes"]["1"]["eps"] == P and detection.class_evidence

    clean = Spectre(epsilon=P / len(labels)).filter(three_classes(seed, poisoned=False)[0], labels, 3)
    assert clean.class_scores.max() < scores[1]  # no clean class stands out as the poisoned one does
    assert clean.class_scores.max() < 3 * clean.class_scores.min()


def test_statistics_from_a_sample_of_each_class_still_find_the_poisons() -> None:
    rows, labels, poison = three_classes(0)
    full = Spectre(epsilon=P / len(labels)).filter(rows, labels, 3)
    same = Spectre(epsilon=P / len(labels), fit_images=N).filter(rows, labels, 3)  # a class of N: no sample
    assert torch.equal(full.scores, same.scores) and torch.equal(full.flagged, same.flagged)
    sampled = Spectre(epsilon=P / len(labels), fit_images=120).filter(rows, labels, 3)
    assert sampled.report["classes"]["1"]["fit_images"] == 120 and sampled.class_scores.argmax() == 1
    assert set(poison.tolist()) <= set(sampled.flagged.tolist()) and len(sampled.flagged) == round(1.5 * P)


def test_scores_ignore_a_class_s_scale_and_eps_is_capped_at_half_a_class() -> None:
    rows, labels, _ = three_classes(0)
    louder = rows.clone()
    louder[labels == 2] *= 5.0
    a = Spectre(epsilon=0.9).filter(rows, labels, 3)
    b = Spectre(epsilon=0.9).filter(louder, labels, 3)
    assert torch.allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4) and torch.equal(a.flagged, b.flagged)
    assert a.report["classes"]["0"]["eps"] == N // 2
    assert len(a.flagged) == round(1.5 * (N // 2))  # in one class only


def test_robust_covariance_filter_drops_far_points_and_certifies_clean_ones() -> None:
    g = np.random.default_rng(0)
    x = g.standard_normal((500, 10))
    assert robust_keep(x - x.mean(0), 0.1, 100).all()  # Gaussian: certified at once
    x[:50, 0] += 8.0
    x[:50, 1] -= 6.0
    keep = robust_keep(x - x.mean(0), 0.1, 100)
    assert keep[50:].mean() > 0.98 and keep[:50].mean() < 0.2


def test_detect_reads_the_chosen_point_of_the_trained_model() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (80, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(80) % 2
    trainer = SimpleNamespace(
        normalize=Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu")),
        config=SimpleNamespace(eval_batch_size=32),
        amp=False,
    )
    data = SimpleNamespace(images=images, labels=labels, num_classes=2)
    model = resnet18(num_classes=2, width=0.0625)
    ctx = DetectionContext(config=None, trainer=trainer, train_set=data, trained=lambda: model)  # type: ignore[arg-type]
    detection = Spectre().detect(ctx)
    assert detection.scores.shape == (80,) and torch.isfinite(detection.scores).all()
    assert detection.class_scores is not None and detection.class_scores.shape == (2,)
    assert detection.report["classes"]["0"]["dims"] == 40 // 4 - 1
    with pytest.raises(EigenguardError, match="unknown insertion point"):
        Spectre(point="layer3").detect(ctx)


def test_options_are_validated() -> None:
    assert Spectre().describe() == {
        "name": "spectre",
        "epsilon": 0.1,
        "point": "stage3",
        "dims": 100,
        "alpha": 4.0,
        "removal_factor": 1.5,
        "fit_images": None,
    }
    bad_options = ({"epsilon": 0}, {"epsilon": 1}, {"dims": 0}, {"alpha": 0}, {"removal_factor": -1}, {"point": 3})
    for bad in (*bad_options, {"fit_images": 7}):
        with pytest.raises(EigenguardError):
            Spectre(**bad)
