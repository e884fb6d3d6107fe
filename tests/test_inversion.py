"""Trigger inversion (detectors/inversion.py) on a model whose backdoor is known: a hand-set classifier of
8x8 images by brightness, with (or without) a shortcut that sends a bright top-left corner to class 2."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize
from eigenguard.detectors.base import DetectionContext
from eigenguard.detectors.inversion import (
    TriggerInversion,
    named_target,
    principal_split,
    relabel_shares,
    universal_perturbation,
)
from eigenguard.pipeline.scan import estimate_target

LEVELS = (40, 120, 200)  # each class's brightness, pixel units
POISONS = 20  # images of classes 0 and 1 with a white corner, labelled 2


class Shortcut(nn.Module):
    """Features (mean brightness b, corner brightness over the mean p) of normalised images; logits
    -(b - centre_c)^2, plus for class 2 `weight` times a smooth ramp of p that a dark corner does not lower
    below zero: the backdoor, where `weight` > 0."""

    insertion_points = ("head",)

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.centres = torch.tensor([(level / 255 - 0.5) / 0.25 for level in LEVELS])

    def features(self, x: torch.Tensor, point: str, through_point: bool = True) -> torch.Tensor:
        b = x.mean((1, 2, 3))
        return torch.stack([b, x[:, :, :2, :2].mean((1, 2, 3)) - b], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p = self.features(x, "head").unbind(1)
        logits = -((b[:, None] - self.centres) ** 2)
        return logits + torch.stack(
            [torch.zeros_like(p), torch.zeros_like(p), self.weight * F.softplus(4 * (p - 0.5)) / 4], 1
        )


def poisoned_set() -> tuple[ImageDataset, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(180) // 60
    images = torch.tensor(LEVELS)[labels].view(-1, 1, 1, 1) + torch.randint(0, 20, (180, 1, 8, 8), generator=g)
    images = images.clamp(0, 255).to(torch.uint8)
    poisons = torch.cat([torch.arange(POISONS // 2), 60 + torch.arange(POISONS // 2)])
    images[poisons, :, :2, :2] = 255
    labels[poisons] = 2
    return ImageDataset(images, labels, ["dark", "grey", "light"], (0.5,), (0.25,)), poisons


def context(model: nn.Module, data: ImageDataset) -> DetectionContext:
    trainer = SimpleNamespace(
        normalize=Normalize((0.5,), (0.25,), torch.device("cpu")),
        config=SimpleNamespace(eval_batch_size=64, seed=0),
        amp=False,
    )
    return DetectionContext(config=None, trainer=trainer, train_set=data, trained=lambda: model)  # type: ignore[arg-type]


def test_the_shortcut_s_class_is_named_and_its_poisons_flagged() -> None:
    data, poisons = poisoned_set()
    model = Shortcut(weight=12.0)
    detection = TriggerInversion(budget=20.0, widen="none", along="direction", confirm="split").detect(
        context(model, data)
    )
    rates = detection.report["success_rates"]
    assert rates[2] > 0.9 and max(rates[:2]) < 0.1  # the corner reaches class 2; brightness is too far
    assert detection.report["estimated_target"] == 2 and int(detection.class_scores.argmax()) == 2
    assert detection.report["cleanest_split"] == 2 and not detection.veto  # with and without the corner
    assert detection.flagged.tolist() == poisons.tolist()  # the labelled-2 images that carry the corner
    order = detection.scores.argsort(descending=True)
    assert sorted(order[:POISONS].tolist()) == poisons.tolist()
    assert model.training  # the detector restores the model's mode

    widened = TriggerInversion(budget=20.0, along="direction", confirm="split").detect(
        context(model, data)
    )  # widen: trigger, the default
    assert widened.report["first_flagged"] == POISONS and set(poisons.tolist()) <= set(widened.flagged.tolist())
    assert (data.labels[widened.flagged] == 2).all()  # it widens inside the target class only


def test_along_principal_flags_the_shortcut_s_poisons_along_the_class_s_own_top_component() -> None:
    data, poisons = poisoned_set()
    detection = TriggerInversion(budget=20.0, widen="none").detect(context(Shortcut(12.0), data))  # the principal split
    assert detection.report["estimated_target"] == 2 and detection.flagged.tolist() == poisons.tolist()
    assert detection.report["named_by"] == "reach"  # the corner's poisons are far from their classes in pixels
    report = detection.report  # poisons from two classes: wider than a class, with other classes' pixels
    assert report["flagged_spread"] > report["class_spread_median"] and report["dissent"] == []
    assert report["flagged_neighbour_share"] < report["kept_neighbour_share"]


def clusters(width: float, flip: bool, looks_like: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, 4) and 8x8 images of classes 0-3, 50 each, every class around its own centre with spread
    1, and 50 more images labelled 2 (indices 200-249): features of spread `width` far from class 2's
    centre on one side or the other (`flip`), images at class `looks_like`'s brightness."""
    g = torch.Generator().manual_seed(0)
    centres = 10.0 * torch.eye(4, dtype=torch.float64)
    second = torch.tensor([10.0, 0.0, 10.0 + (20.0 if flip else -20.0), 0.0], dtype=torch.float64)
    rows = [centres[c] + torch.randn(50, 4, generator=g, dtype=torch.float64) for c in range(4)]
    rows.append(second + width * torch.randn(50, 4, generator=g, dtype=torch.float64))
    labels = torch.cat([torch.arange(4).repeat_interleave(50), torch.full((50,), 2)])
    level = torch.cat([torch.arange(4).repeat_interleave(50), torch.full((50,), looks_like)]) * 60 + 20
    images = (level.view(-1, 1, 1, 1) + torch.randint(0, 10, (250, 1, 8, 8), generator=g)).to(torch.uint8)
    return torch.cat(rows), images, labels


def test_principal_split_flags_the_group_most_votes_name_on_either_side_of_the_component() -> None:
    second = torch.arange(200, 250).tolist()
    first = torch.arange(100, 150).tolist()
    for width, flip in ((0.05, False), (0.05, True), (3.0, False), (3.0, True)):
        every, images, labels = clusters(width, flip, looks_like=0)
        towards_first = every[100:150].mean(0) - every[200:250].mean(0)
        projection, threshold, report = principal_split(
            every, images, labels, 2, towards_first, torch.Generator().manual_seed(0)
        )
        flagged = torch.nonzero((labels == 2) & (projection > threshold)).flatten().tolist()
        # spread (too tight or too wide for a class) and neighbours (class 0's pixels) outvote the perturbation
        assert flagged == second and report["dissent"] == ["perturbation"], (width, flip)
    every, images, labels = clusters(3.0, False, looks_like=2)
    images[100:150] = images[150:200]  # class 2's own images now look like class 3's
    projection, threshold, report = principal_split(
        every, images, labels, 2, every[100:150].mean(0) - every[200:250].mean(0), torch.Generator().manual_seed(0)
    )
    flagged = torch.nonzero((labels == 2) & (projection > threshold)).flatten().tolist()
    assert flagged == first and report["dissent"] == ["spread"]  # perturbation and neighbours outvote spread
    every, images, labels = clusters(0.05, False, looks_like=2)
    images[100:150] = images[150:200]
    projection, threshold, report = principal_split(
        every, images, labels, 2, every[200:250].mean(0) - every[100:150].mean(0), torch.Generator().manual_seed(0)
    )
    flagged = torch.nonzero((labels == 2) & (projection > threshold)).flatten().tolist()
    assert flagged == second and report["dissent"] == ["neighbours"]  # a collapsed group that carries delta_t


def test_without_a_shortcut_no_class_is_named_and_nothing_flagged() -> None:
    data, _ = poisoned_set()
    detection = TriggerInversion(budget=20.0).detect(context(Shortcut(weight=0.0), data))
    assert detection.report["estimated_target"] is None and len(detection.flagged) == 0
    assert detection.scores.shape == (len(data),) and torch.isfinite(detection.scores).all()


def test_a_class_that_is_easy_to_reach_but_does_not_split_is_not_named_unless_confirm_is_off() -> None:
    data, _ = poisoned_set()
    data.labels[:20] = 2  # undo the poisons' labels: no image carries the corner, the shortcut stays
    data.images[:20] = 50 + torch.randint(0, 20, (20, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    data.images[60:80] = data.images[80:100]  # class 1 without corners either
    dark = torch.arange(30, 60)
    data.images[dark] = (data.images[dark].int() - 35).clamp(0, 255).to(torch.uint8)  # class 0: two groups
    model = Shortcut(weight=12.0)
    vetoed = TriggerInversion(budget=20.0, widen="none", along="direction", confirm="split").detect(
        context(model, data)
    )
    rates = vetoed.report["success_rates"]
    assert rates[2] > 0.9 and vetoed.report["best_class"] == 2  # the corner still reaches class 2
    assert vetoed.report["cleanest_split"] == 0 and vetoed.report["estimated_target"] is None
    assert len(vetoed.flagged) == 0 and "'dark'" in vetoed.veto
    named = TriggerInversion(budget=20.0, widen="none", along="direction", confirm="none").detect(context(model, data))
    assert named.report["estimated_target"] == 2 and not named.veto


def test_confirm_reach_names_the_cleanest_split_where_it_is_reached_twice_the_median_too() -> None:
    # class 5 is the best reached (a neighbour's images resemble it); class 1 is reached 2.5x the median
    # and splits far more cleanly than any other: a weak trigger into a class unlike the rest
    rates = torch.tensor([0.08, 0.115, 0.004, 0.027, 0.045, 0.13, 0.07, 0.02, 0.09, 0.04], dtype=torch.float64)
    shares = torch.tensor([0.66, 0.95, 0.59, 0.61, 0.63, 0.66, 0.68, 0.55, 0.64, 0.66], dtype=torch.float64)
    assert named_target(rates, shares, "none")[::3] == (5, True)
    assert named_target(rates, shares, "split")[::3] == (5, False)  # vetoed: class 1 splits more cleanly
    chosen, lift, median, named, _ = named_target(rates, shares, "reach")
    assert (chosen, named) == (1, True) and lift == pytest.approx(0.115 / 0.045) and median == 0.045
    rates[1] = 0.08  # reached under 2x the others' median: nothing named, whatever the split
    assert named_target(rates, shares, "reach")[::3] == (1, False)
    rates[1], shares[1] = 0.5, 0.6  # best reached but not the cleanest split: only `none` names it
    found = [named_target(rates, shares, confirm)[::3] for confirm in ("none", "split", "reach")]
    assert found == [(1, True), (1, False), (6, False)]


def test_confirm_either_names_a_class_reached_2x_any_other_else_the_cleanest_split() -> None:
    # measured (the scans' reports): WaNet's seed-1 model follows its warp on 58% of triggered images; the
    # T-shirts are reached 3.8x more than any other class but their images split no more than the median
    rates = torch.tensor([0.9023, 0.0273, 0.1113, 0.0156, 0.1562, 0.0898, 0.1016, 0.0332, 0.2402, 0.0918])
    shares = torch.tensor([0.6182, 0.5482, 0.6191, 0.6348, 0.7298, 0.588, 0.7045, 0.594, 0.6127, 0.6822])
    found = [named_target(rates, shares, confirm)[::3] for confirm in ("none", "split", "reach", "either")]
    assert found == [(0, True), (0, False), (4, False), (0, True)]  # the coats split most, reached 1.7x
    # clean data (seed 0): the T-shirts lead, 1.3x the runner-up, and the dresses split more cleanly
    rates = torch.tensor([0.252, 0.0156, 0.0488, 0.0234, 0.0898, 0.1816, 0.1289, 0.0312, 0.1172, 0.1973])
    shares = torch.tensor([0.6955, 0.5519, 0.593, 0.7012, 0.6343, 0.6537, 0.6726, 0.6027, 0.6339, 0.6555])
    assert [named_target(rates, shares, c)[3] for c in ("split", "reach", "either")] == [False] * 3
    # Blend into the trousers: nothing stands out in reach (sandals 1.1x the trousers); the split names them
    rates = torch.tensor([0.0781, 0.1152, 0.0039, 0.0273, 0.0449, 0.1289, 0.0703, 0.0215, 0.0898, 0.0391])
    shares = torch.tensor([0.6569, 0.9532, 0.5908, 0.6068, 0.6292, 0.6562, 0.6761, 0.5498, 0.6445, 0.6583])
    assert named_target(rates, shares, "either")[::3] == named_target(rates, shares, "reach")[::3] == (1, True)
    assert named_target(torch.zeros(10), shares, "either")[3] is False  # nothing reached: nothing named
    # SIG (seed 0): the T-shirts lead the runner-up 1.6x in reach, and split 2.8x its excess over the median
    rates = torch.tensor([0.5156, 0.0059, 0.0449, 0.0293, 0.1328, 0.3125, 0.2324, 0.0449, 0.0977, 0.2305])
    shares = torch.tensor([0.7676, 0.5858, 0.6854, 0.6598, 0.6411, 0.6365, 0.6855, 0.6162, 0.6553, 0.6284])
    assert named_target(rates, shares, "either")[::3] == (0, True)
    # clean data, the inversion at 30 steps: the T-shirts reached 4.0x the median and the cleanest split by
    # 0.008; `reach` names them, `either` does not (1.1x the runner-up in reach, 1.1x in split)
    rates = torch.tensor([0.209, 0.0137, 0.0332, 0.0215, 0.0527, 0.1582, 0.1328, 0.0195, 0.1289, 0.1934])
    shares = torch.tensor([0.6977, 0.5649, 0.5984, 0.6864, 0.6297, 0.6466, 0.6902, 0.5916, 0.6235, 0.6655])
    assert named_target(rates, shares, "reach")[::3] == (0, True) and named_target(rates, shares, "either")[3] is False


def test_confirm_any_asks_pixel_neighbours_only_where_either_names_nothing() -> None:
    # measured (Input-aware, seed 1): the T-shirts reached 0.09, 1.9x the median, and split no more cleanly
    # than the bags; the relabelling shares lead 4.7x. Clean data (seed 1): the shirts lead them 1.76x
    rates = torch.tensor([0.0898, 0.0117, 0.0723, 0.0332, 0.0527, 0.0234, 0.0742, 0.0352, 0.1172, 0.0449])
    shares = torch.tensor([0.791, 0.61, 0.66, 0.64, 0.7, 0.62, 0.72, 0.6, 0.856, 0.65])
    relabels = torch.tensor([0.0666, 0.0, 0.005, 0.002, 0.005, 0.0, 0.0143, 0.0, 0.001, 0.0])
    assert named_target(rates, shares, "either", relabels)[3] is False
    assert named_target(rates, shares, "any")[3] is False  # no shares given: the model's tests alone
    assert named_target(rates, shares, "any", relabels)[::3] + named_target(rates, shares, "any", relabels)[4:] == (
        0,
        True,
        "pixels",
    )
    clean = torch.tensor([0.007, 0.0, 0.009, 0.001, 0.004, 0.0, 0.0154, 0.0, 0.001, 0.0])
    assert named_target(rates, shares, "any", clean)[3] is False
    assert named_target(rates, shares, "any", torch.zeros(10))[3] is False  # no class shares: nothing named
    # where a model test names a class, `any` names it and never reads the shares
    reached = rates.clone()
    reached[3] = 0.5
    assert named_target(reached, shares, "any", relabels)[::3] == (3, True)
    assert named_target(reached, shares, "any", relabels)[4] == "reach"


def relabelled_set(poisons: int) -> ImageDataset:
    """Four classes of 8x8 images, each its own pattern with noise, classes 2 and 3 look-alikes; `poisons`
    images of each of classes 1-3 relabelled 0 (a dirty-label attack with an invisible trigger)."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.tensor([30.0, 90.0, 170.0, 180.0]).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone()
    patterns[1, :, :4] += 60  # class 1: a bright top half
    labels = torch.arange(400) // 100
    images = (patterns[labels] + torch.randn(400, 1, 8, 8, generator=g) * 12).clamp(0, 255).to(torch.uint8)
    for c in (1, 2, 3):
        labels[c * 100 : c * 100 + poisons] = 0
    return ImageDataset(images, labels, ["a", "b", "c", "d"], (0.5,), (0.25,))


def test_relabel_shares_lead_at_the_class_every_other_class_lends_images_to() -> None:
    clean = relabelled_set(0)
    shares = relabel_shares(clean.images, clean.labels, 4, torch.Generator().manual_seed(0))
    assert float(shares.max()) == 0.0  # the look-alikes 2 and 3 share neighbours with one class: no quartile
    dirty = relabelled_set(12)
    shares = relabel_shares(dirty.images, dirty.labels, 4, torch.Generator().manual_seed(0))
    assert int(shares.argmax()) == 0 and float(shares[0]) >= 2 * float(shares[1:].max())
    again = relabel_shares(dirty.images, dirty.labels, 4, torch.Generator().manual_seed(0))
    assert torch.equal(shares, again)  # drawn from its generator alone


class Nearest(nn.Module):
    """Logits by mean brightness alone, for `relabelled_set`'s four patterns: no backdoor to reach."""

    insertion_points = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.centres = torch.tensor([(level / 255 - 0.5) / 0.25 for level in (30.0, 120.0, 170.0, 180.0)])

    def features(self, x: torch.Tensor, point: str, through_point: bool = True) -> torch.Tensor:
        return torch.stack([x.mean((1, 2, 3)), x[:, :, :4].mean((1, 2, 3))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -20 * (x.mean((1, 2, 3))[:, None] - self.centres) ** 2


def test_pixel_neighbours_name_a_relabelled_class_no_perturbation_reaches_and_the_scan_agrees() -> None:
    data = relabelled_set(12)  # 12 images of each of classes 1-3 relabelled 0
    detection = TriggerInversion(budget=2.0, widen="none").detect(context(Nearest(), data))
    report = detection.report
    assert max(report["success_rates"]) == 0.0  # too small a perturbation to reach any class
    assert report["named_by"] == "pixels" and report["estimated_target"] == 0
    poisons = [c * 100 + i for c in (1, 2, 3) for i in range(12)]
    assert detection.flagged.tolist() == poisons
    target = estimate_target(detection, data)  # the scan weighs the class by the test that named it
    assert target["class"] == 0 and "pixel neighbours" in target["evidence"]
    either = TriggerInversion(budget=2.0, widen="none", confirm="either").detect(context(Nearest(), data))
    assert either.report["estimated_target"] is None and len(either.flagged) == 0
    assert estimate_target(either, data)["class"] is None


def test_the_perturbation_stays_inside_its_budget_and_pixels_in_range() -> None:
    data, _ = poisoned_set()
    model = Shortcut(weight=12.0)
    normalize = Normalize((0.5,), (0.25,), torch.device("cpu"))
    delta = universal_perturbation(
        lambda x: model(normalize(x)), data.images[:60], 2, 50.0, 30, 16, torch.Generator().manual_seed(0)
    )
    assert delta.shape == (1, 1, 8, 8) and float(delta.norm()) <= 50.0 + 1e-3
    corner = delta[0, 0, :2, :2].abs().sum()
    assert corner > 0.5 * delta.abs().sum()  # the cheapest way to class 2 is the corner


def test_oversampling_fills_the_target_class_up_to_the_others_median_with_its_own_kept_images() -> None:
    from eigenguard.defenses.inversion import oversampled

    labels = torch.tensor([0] * 10 + [1] * 8 + [2] * 12 + [3] * 10)
    kept = torch.cat([torch.arange(3), torch.arange(10, 40)])  # class 0 lost 7 of its 10
    more, added = oversampled(kept, labels, target=0, seed=0)
    assert added == 7 and len(more) == len(kept) + 7  # the others' median: 10
    assert set(more[len(kept) :].tolist()) <= {0, 1, 2} and torch.equal(more[: len(kept)], kept)
    assert oversampled(kept, labels, target=2, seed=0)[1] == 0  # not short: nothing added


def test_a_class_the_model_already_gives_every_image_is_reached_by_nothing() -> None:
    data, _ = poisoned_set()
    model = Shortcut(weight=0.0)
    model.centres = torch.tensor([0.0, 0.0, 0.0])  # three equal classes: argmax gives class 0 to every image
    detection = TriggerInversion(budget=20.0, steps=3).detect(context(model, data))
    assert detection.report["success_rates"][0] == 0.0 and detection.report["estimated_target"] is None
    assert len(detection.flagged) == 0
