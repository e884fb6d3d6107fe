"""The guard as a sieve on a toy set where the answer is known: the guarded model is replaced by one that
predicts every image's true class (what a guard that stopped the attack does), so the sieve (detector and
defense) must find exactly the relabelled images, name their target class and train on the rest. And the
AUROC it reports."""

import pytest
import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.defenses import create_defense
from eigenguard.defenses.base import auroc
from eigenguard.defenses.pdb import DefensiveStamp
from eigenguard.defenses.sieve import Sieve
from eigenguard.detectors.refusals import (
    confusion_matrix,
    flag,
    loss_separation,
    otsu,
    outliers,
    refusal_rates,
    refusal_spread,
    widen,
)
from eigenguard.errors import EigenguardError
from eigenguard.training.guarded import GuardedTraining
from tests.test_defenses import tiny_context, tiny_dataset


class BrightnessOracle(nn.Module):
    """tiny_dataset's class c is brightness 60c + noise in [0, 60): this predicts it from the mean pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x * 0.5 + 0.5) * 255  # Normalize((0.5,), (0.5,)) undone
        centres = 60 * torch.arange(4, dtype=x.dtype) + 29.5
        return -((pixels.mean((1, 2, 3))[:, None] - centres) ** 2)


def planted(n: int = 256, poisons: int = 24, target: int = 0) -> tuple[ImageDataset, torch.Tensor, torch.Tensor]:
    """tiny_dataset with `poisons` images of other classes relabelled `target`: (set, poison indices, truth)."""
    data = tiny_dataset(n)
    truth = data.labels.clone()
    others = torch.nonzero(truth != target).flatten()
    chosen = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(3))[:poisons]].sort().values
    data.labels[chosen] = target
    return data, chosen, truth


def test_auroc_matches_the_pairwise_count() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (60,), generator=g).float()  # many ties
    positives = torch.randperm(60, generator=g)[:17]
    is_pos = torch.zeros(60, dtype=torch.bool)
    is_pos[positives] = True
    diff = scores[is_pos][:, None] - scores[~is_pos][None, :]
    expected = ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()
    assert auroc(scores, positives) == pytest.approx(expected, abs=1e-4)
    assert auroc(torch.arange(10.0), torch.tensor([7, 8, 9])) == 1.0
    assert auroc(-torch.arange(10.0), torch.tensor([7, 8, 9])) == 0.0
    assert auroc(torch.ones(10), torch.tensor([1])) == 0.5
    assert auroc(torch.ones(3), torch.tensor([], dtype=torch.int64)) is None


def test_refusals_and_flags() -> None:
    given = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 2, 0, 1, 0, 2, 2])
    assert refusal_rates(confusion_matrix(predicted, given, 4)).tolist() == [0.5, 0.5, 0.0, 0.0]
    assert flag(predicted, given, 0, "target-refusals").tolist() == [1, 2]
    assert flag(predicted, given, 0, "refusals").tolist() == [1, 2, 5]
    assert refusal_spread(confusion_matrix(predicted, given, 4)).tolist() == [
        1.0,
        0.0,
        0.0,
        0.0,
    ]  # class 0's row: 1, 1, 0


def test_spread_names_the_target_where_a_hard_class_refuses_more() -> None:
    """Class 3 is hard (its errors go to class 2 only, at 80%); class 0 holds poisons from every class (50%
    refused, spread evenly): the rate names class 3, the spread names class 0."""
    given = torch.tensor([3] * 10 + [0] * 12 + [1] * 5 + [2] * 5)
    predicted = torch.tensor([2] * 8 + [3] * 2 + [1, 1, 2, 2, 3, 3] + [0] * 6 + [1] * 5 + [2] * 5)
    assert refusal_rates(confusion_matrix(predicted, given, 4)).argmax().item() == 3
    assert refusal_spread(confusion_matrix(predicted, given, 4)).argmax().item() == 0


def test_otsu_splits_two_groups_and_scores_one_group_low() -> None:
    threshold, share = otsu(torch.tensor([1.0, 1.1, 0.9, 1.0, 5.0, 5.2, 4.8]))
    assert 1.1 < threshold < 4.8 and share > 0.95
    one_group = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    assert otsu(one_group)[1] == pytest.approx(2 / torch.pi, abs=0.02)  # one normal group: 2/pi
    assert otsu(torch.ones(5)) == (float("inf"), 0.0)
    assert otsu(torch.tensor([0.0, 0.0, 0.0, 1.0]))[0] == 0.5  # never inside the run of zeros


def two_sided_losses(poisons_low: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four classes of 40 images, log10-losses spread around -1; class 2's last 15 are poisons, at -6 (a guard
    that learned them) or at +1 (a guard that refused them): (losses, given labels, poison mask)."""
    g = torch.Generator().manual_seed(1)
    logs = -1 + 0.3 * torch.randn(160, generator=g, dtype=torch.float64)
    given = torch.arange(4).repeat_interleave(40)
    poison = torch.zeros(160, dtype=torch.bool)
    poison[105:120] = True
    logs[poison] = (-6.0 if poisons_low else 1.0) + 0.1 * torch.randn(15, generator=g, dtype=torch.float64)
    return 10**logs, given, poison


@pytest.mark.parametrize("poisons_low", [True, False])
def test_the_bimodal_class_is_the_target_and_its_outlying_group_the_poisons(poisons_low: bool) -> None:
    losses, given, poison = two_sided_losses(poisons_low)
    separation = loss_separation(losses, given, 4)
    assert int(torch.tensor(separation).argmax()) == 2 and separation[2] > 0.8
    mask, side = outliers(losses, given, 2, 4)
    assert side == ("low" if poisons_low else "high") and torch.equal(mask, poison)
    assert outliers(torch.ones(160), given, 2, 4)[1] == "none"


@pytest.mark.parametrize("flagged", ["drop", "relabel"])
def test_sieve_recovers_planted_poisons(flagged: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data, poisons, truth = planted()
    ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
    monkeypatch.setattr(GuardedTraining, "train_guarded", lambda self, *a, **kw: BrightnessOracle())
    seen: list[ImageDataset] = []
    fit = ctx.trainer.fit
    monkeypatch.setattr(ctx.trainer, "fit", lambda model, d, **kw: seen.append(d) or fit(model, d, **kw))
    _, report = Sieve(flagged=flagged).run(ctx)
    assert report["estimated_target"] == 0
    assert report["split"] == {"flagged": 24, "flagged_poisoned": 24, "precision": 1.0, "recall": 1.0}
    assert report["loss_auroc"] == 1.0
    (trained,) = seen
    if flagged == "drop":
        assert report["trained_on"] == len(trained) == 256 - 24
        keep = torch.ones(256, dtype=torch.bool)
        keep[poisons] = False
        assert torch.equal(trained.labels, truth[keep])
    else:
        assert torch.equal(trained.labels, truth)  # the flagged images get the class the guard sees


def test_the_outlier_rule_recovers_planted_poisons(monkeypatch: pytest.MonkeyPatch) -> None:
    data, poisons, _ = planted()
    ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
    monkeypatch.setattr(GuardedTraining, "train_guarded", lambda self, *a, **kw: BrightnessOracle())
    _, report = Sieve(target="bimodal", rule="target-outliers").run(ctx)
    assert report["estimated_target"] == 0 and report["outlier_side"] == "high"
    assert report["split"] == {"flagged": 24, "flagged_poisoned": 24, "precision": 1.0, "recall": 1.0}


def test_widening_finds_the_poisons_the_first_rule_missed() -> None:
    """Poisons carry a blended stripe and the target's label; the first rule found half of them: the mean image
    difference seeded by that half points at the stripe, and the other half lies in the high group."""
    data, poisons, _ = planted(n=256, poisons=24)
    stripe = torch.zeros(1, 8, 8)
    stripe[:, 2:4, :] = 1.0
    blended = 0.8 * data.images[poisons].float() + 0.2 * 255 * stripe
    data.images[poisons] = blended.round().clamp(0, 255).to(torch.uint8)
    first = torch.zeros(256, dtype=torch.bool)
    first[poisons[:12]] = True
    extra, share = widen(data.images, data.labels, 0, first)
    missed = torch.zeros(256, dtype=torch.bool)
    missed[poisons[12:]] = True
    assert torch.equal(extra & missed, missed) and not bool((extra & first).any())
    assert bool((extra <= (data.labels == 0)).all()) and share > 2 / torch.pi
    assert not widen(data.images, data.labels, 1, first)[0].any()  # no flagged image carries label 1


def test_sieve_in_front_of_pdb_gives_a_stamped_model(monkeypatch: pytest.MonkeyPatch) -> None:
    data, poisons, _ = planted()
    ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
    monkeypatch.setattr(GuardedTraining, "train_guarded", lambda self, *a, **kw: BrightnessOracle())
    model, report = Sieve(then="pdb").run(ctx)
    assert isinstance(model.on_input, DefensiveStamp)
    assert report["pdb"]["defensive_images"] > 0 and report["trained_on"] == 256 - 24


def test_sieve_options_are_checked() -> None:
    for bad in (
        {"rule": "all"},
        {"flagged": "keep"},
        {"then": "asd"},
        {"target": "vote"},
        {"widen": "all"},
        {"sieve_epochs": 0},
    ):
        with pytest.raises(EigenguardError, match=f"option {next(iter(bad))} = .* for defense 'sieve'; allowed"):
            create_defense("sieve", **bad)


def test_guarded_training_of_the_sieve_is_logged_as_its_own_phase() -> None:
    data, poisons, _ = planted(n=64, poisons=6)
    ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
    Sieve(sieve_epochs=1).run(ctx)
    assert [row["phase"] for row in ctx.trainer.history] == ["sieve", "train"]


def test_a_cached_guard_reading_changes_no_result() -> None:
    """The second run of one setting reads the guard's predictions from the cache: same split, same final
    weights, same log phases and fit numbering, and says it was a hit."""
    data, poisons, _ = planted(n=64, poisons=6)
    runs = []
    for _ in range(2):
        ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
        model, report = Sieve(sieve_epochs=1).run(ctx)
        runs.append((model.state_dict(), report, [row["phase"] for row in ctx.trainer.history], ctx.trainer.fits))
    (first, r1, phases1, fits1), (second, r2, phases2, fits2) = runs
    assert not r1.pop("sieve_cached") and r2.pop("sieve_cached")
    assert r1 == r2 and phases1 == phases2 == ["sieve", "train"] and fits1 == fits2 == 2
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_sieve_detector_flags_the_planted_poisons_and_names_their_class(monkeypatch: pytest.MonkeyPatch) -> None:
    from eigenguard.detectors import DetectionContext, create_detector
    from eigenguard.pipeline.scan import detection_metrics, estimate_target

    data, poisons, _ = planted()
    ctx = tiny_context(data, tiny_dataset(32, seed=1))
    monkeypatch.setattr(GuardedTraining, "train_guarded", lambda self, *a, **kw: BrightnessOracle())
    detection = create_detector("sieve", widen="none").detect(
        DetectionContext(ctx.config, ctx.trainer, data, trained=lambda: None)
    )
    assert torch.equal(detection.flagged, poisons) and detection.report["outlier_side"] == "high"
    assert set(detection.scores.argsort(descending=True)[:24].tolist()) == set(poisons.tolist())
    assert detection_metrics(detection, poisons, len(data))["auroc"] == 1.0
    target = estimate_target(detection, data)
    assert target["class"] == 0 and "within-group variance" in target["evidence"]


def test_the_sieve_trains_the_papers_eigenguard() -> None:
    # the guarded reading's cache names its guard by these options: the defense's describe, as before the move
    from eigenguard.defenses.eigenguard import EigenGuardDefense
    from eigenguard.options import options_of

    assert {"name": "eigenguard", **options_of(GuardedTraining())} == EigenGuardDefense().describe()


class Indifferent(nn.Module):
    """A guarded model that tells no image apart (equal logits): no class's losses split, no target stands out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 4, dtype=x.dtype)


def test_where_no_class_stands_out_the_sieve_flags_nothing_or_asks_abl(monkeypatch: pytest.MonkeyPatch) -> None:
    from eigenguard.detectors import Detection
    from eigenguard.detectors.loss_isolation import LossIsolation

    data, poisons, _ = planted()
    monkeypatch.setattr(GuardedTraining, "train_guarded", lambda self, *a, **kw: Indifferent())
    ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
    _, report = Sieve(target="bimodal", rule="target-outliers", no_target="nothing").run(ctx)
    assert report["target_lift"] < 2 and report["estimated_target"] is None
    assert report["split"]["flagged"] == 0 and report["trained_on"] == 256

    # ABL's isolation flags the poisons and a few clean images of other classes: it names class 0, and the
    # isolated images labelled 0 (the poisons) are flagged
    isolated = torch.cat([poisons, torch.nonzero(data.labels == 2).flatten()[:3]]).sort().values
    calls = []
    fake = Detection(torch.zeros(256, dtype=torch.float64), isolated)
    monkeypatch.setattr(LossIsolation, "detect", lambda self, c: calls.append(c) or fake)
    ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
    _, report = Sieve(target="bimodal", rule="target-outliers", no_target="abl").run(ctx)
    assert len(calls) == 1 and report["estimated_target"] == 0 and report["abl_target_lift"] >= 2
    assert report["first_split"] == {"flagged": 24, "flagged_poisoned": 24, "precision": 1.0, "recall": 1.0}
    assert report["split"]["recall"] == 1.0

    # where ABL names no class either, nothing is flagged
    spread = torch.cat([torch.nonzero(data.labels == c).flatten()[:8] for c in range(4)]).sort().values  # 8 a class
    monkeypatch.setattr(
        LossIsolation, "detect", lambda self, c: Detection(torch.zeros(256, dtype=torch.float64), spread)
    )
    ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
    _, report = Sieve(target="bimodal", rule="target-outliers", no_target="abl").run(ctx)
    assert report["abl_target_lift"] < 2 and report["split"]["flagged"] == 0


def test_a_class_that_stands_out_is_named_whatever_no_target_says(monkeypatch: pytest.MonkeyPatch) -> None:
    data, poisons, _ = planted()
    monkeypatch.setattr(GuardedTraining, "train_guarded", lambda self, *a, **kw: BrightnessOracle())
    reports = []
    for no_target in ("flag", "nothing", "abl"):
        ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
        reports.append(Sieve(target="bimodal", rule="target-outliers", no_target=no_target).run(ctx)[1])
    assert all(r["target_lift"] >= 2 and r["split"] == reports[0]["split"] for r in reports)
    assert "abl_target_lift" not in reports[2]
