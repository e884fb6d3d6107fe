"""The baseline defenses: each one's mechanism on tiny models and data where the answer is known, the
backdoored-model cache, and every defense end to end through the pipeline."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from eigenguard import TrainConfig, train
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize
from eigenguard.defenses import DEFENSES, DefenseContext, create_defense
from eigenguard.defenses.abl import ABL
from eigenguard.defenses.anp import ANP, batchnorms
from eigenguard.defenses.clp import CLP, channel_lipschitz, conv_bn_pairs
from eigenguard.defenses.nad import attention_map
from eigenguard.defenses.spectral_signatures import SpectralSignatures
from eigenguard.detectors.loss_isolation import lga_loss
from eigenguard.detectors.spectral import spectral_scores
from eigenguard.errors import EigenguardError
from eigenguard.models import create_model
from eigenguard.training.features import classifier
from eigenguard.training.trainer import Trainer


def tiny_dataset(n: int, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = (torch.randint(0, 60, (n, 1, 8, 8), generator=g) + 60 * labels[:, None, None, None]).to(torch.uint8)
    return ImageDataset(images, labels, ["a", "b", "c", "d"])


def tiny_context(train_set: ImageDataset, clean: ImageDataset, poisoned: torch.Tensor | None = None) -> DefenseContext:
    config = TrainConfig(dataset="mnist", model="resnet18", width=0.0625, epochs=1, batch_size=16, device="cpu")
    device = torch.device("cpu")
    trainer = Trainer(config, device, Normalize((0.5,), (0.5,), device), False, clean, None, progress=False)
    model = trainer.new_model(num_classes=4)
    return DefenseContext(
        config, trainer, train_set, clean, poisoned if poisoned is not None else torch.empty(0, dtype=torch.int64),
        backdoored=lambda: model,
    )  # fmt: skip


# -- ANP ---------------------------------------------------------------------------------------------


def test_anp_masks_stay_in_unit_interval() -> None:
    ctx = tiny_context(tiny_dataset(64), tiny_dataset(64, seed=1))
    model = ctx.backdoored()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = ANP(iterations=15, batch_size=16, mask_lr=2.0).optimise_masks(model, ctx)
    assert set(masks) == {name for name, _ in batchnorms(model)}
    values = torch.cat(list(masks.values()))
    assert values.min() >= 0 and values.max() <= 1
    assert (values < 1).any()  # the masks did move (lr 2.0 pushes some to the bounds)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # optimised on a copy


def test_anp_pruning_zeroes_exactly_the_masked_neurons() -> None:
    model = create_model("resnet18", in_channels=1, num_classes=4, width=0.0625)
    layers = batchnorms(model)
    with torch.no_grad():
        for _, bn in layers:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
    before = {n: (bn.weight.clone(), bn.bias.clone()) for n, bn in layers}
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(bn.num_features, generator=g) for n, bn in layers}
    pruned = ANP.prune(model, masks, threshold=0.2)
    assert pruned == sum(int((m < 0.2).sum()) for m in masks.values()) > 0
    for n, bn in layers:
        off = masks[n] < 0.2
        assert (bn.weight[off] == 0).all()
        assert torch.equal(bn.weight[~off], before[n][0][~off])
        assert torch.equal(bn.bias, before[n][1])  # biases are left alone, as in the official code


# -- ABL ---------------------------------------------------------------------------------------------


class MarkerModel(nn.Module):
    """Logits that put class 0 far ahead exactly for images whose first pixel is bright (the 'backdoor')."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        marker = (x[:, 0, 0, 0] > 0.9).float()
        logits = torch.zeros(len(x), 4) + self.dummy
        logits[:, 0] += 10 * marker
        return logits


def test_abl_isolates_the_planted_low_loss_samples() -> None:
    data = tiny_dataset(200)
    planted = torch.arange(0, 200, 10)  # 20 samples: marker on, label 0 -> near-zero loss
    data.images[planted, 0, 0, 0] = 255
    data.labels[planted] = 0
    data.images[:, 0, 0, 0][~torch.isin(torch.arange(200), planted)] = 0
    ctx = tiny_context(data, tiny_dataset(16), poisoned=planted)
    isolated = ABL(isolation_rate=0.1).isolate(MarkerModel(), ctx)
    assert torch.equal(isolated, planted)
    assert ctx.precision_recall(isolated) == {"flagged": 20, "flagged_poisoned": 20, "precision": 1.0, "recall": 1.0}


def test_lga_pushes_the_loss_back_up_below_gamma() -> None:
    logits = torch.tensor([[4.0, 0.0]], requires_grad=True)  # CE ~ 0.018 < gamma
    lga_loss(0.5)(logits, torch.tensor([0]), torch.empty(0)).backward()
    assert logits.grad is not None and logits.grad[0, 0] > 0  # descending it raises the CE of the true class
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)  # CE ~ 0.69 > gamma: ordinary descent
    lga_loss(0.5)(logits, torch.tensor([0]), torch.empty(0)).backward()
    assert logits.grad is not None and logits.grad[0, 0] < 0
    assert ABL().epochs(100) == (20, 80, 5) and ABL().epochs(12) == (2, 10, 1)


# -- Spectral Signatures -----------------------------------------------------------------------------


def test_spectral_signatures_remove_planted_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 32, generator=g)
    labels = torch.arange(400) % 2
    planted = torch.nonzero(labels == 1).flatten()[:20]  # 10% of class 1, shifted along one direction
    direction = torch.randn(32, generator=g)
    features[planted] += 10 * direction / direction.norm()
    removed = SpectralSignatures(epsilon=0.1, removal_factor=1.5).flag(features, labels)
    assert set(planted.tolist()) <= set(removed.tolist())
    assert len(removed) == 2 * 30  # 1.5 x 10% of each class of 200
    scores = spectral_scores(features[labels == 1])
    assert scores.topk(20).indices.sort().values.tolist() == list(range(20))


# -- NAD / FP ----------------------------------------------------------------------------------------


def test_nad_attention_map_is_unit_norm_and_channel_pooled() -> None:
    f = torch.randn(3, 8, 4, 4)
    a = attention_map(f, 2.0)
    assert a.shape == (3, 16) and torch.allclose(a.norm(dim=1), torch.ones(3))
    assert torch.allclose(a, attention_map(-f, 2.0))
    assert torch.allclose(a[0], torch.nn.functional.normalize(f[0].pow(2).mean(0).flatten(), dim=0))


# -- CLP ---------------------------------------------------------------------------------------------


def test_clp_pairs_every_convolution_with_the_batchnorm_it_feeds() -> None:
    model = create_model("resnet18", in_channels=1, num_classes=4, width=0.25)
    pairs = conv_bn_pairs(model)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(pairs) == len(convs) == 20  # stem, 16 block convolutions, 3 projection shortcuts
    assert all(bn.num_features == conv.out_channels for _, conv, bn in pairs)
    assert len({id(conv) for _, conv, _ in pairs}) == len(pairs)


def test_clp_prunes_a_planted_high_lipschitz_channel_and_nothing_else_there() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=4, width=0.25).eval()
    name, conv, bn = conv_bn_pairs(model)[5]
    before = channel_lipschitz(conv, bn)
    with torch.no_grad():
        conv.weight[3] *= 50  # channel 3 now amplifies its input 50x more
    assert torch.allclose(channel_lipschitz(conv, bn)[3], 50 * before[3], rtol=1e-4)
    # the bound: no input of unit norm moves the channel's (pre-shift) output by more than its UCLC
    x = torch.randn(64, conv.in_channels, 1, 1)
    patch = torch.zeros(64, conv.in_channels, *conv.kernel_size)
    patch[:, :, 1, 1] = x[:, :, 0, 0] / x.flatten(1).norm(dim=1, keepdim=True)
    response = (torch.nn.functional.conv2d(patch, conv.weight).flatten(1) * (bn.weight / bn.running_var.sqrt())).abs()
    assert (response <= channel_lipschitz(conv, bn) + 1e-5).all()
    pruned = CLP(u=3.0).prune(model)
    assert pruned[name] == 1 and bn.weight[3] == 0 and bn.bias[3] == 0
    assert (bn.weight[torch.arange(bn.num_features) != 3] != 0).all()
    with pytest.raises(EigenguardError, match=r"u = -1\.0 for defense .clp.; allowed: a number >= 0"):
        create_defense("clp", u=-1.0)


# -- D-BR --------------------------------------------------------------------------------------------


def test_dbr_centre_separation_loss() -> None:
    from eigenguard.detectors.sensitivity import centre_separation_loss

    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert centre_separation_loss(same, labels, 4) == pytest.approx(0.5)  # 2 x 2 matrix, off-diagonal 1
    apart = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0]])
    assert centre_separation_loss(apart, labels, 4) == pytest.approx(0.0)


def test_dbr_rotate_and_shift() -> None:
    from eigenguard.detectors.sensitivity import rotate_and_shift

    x = torch.rand(3, 1, 9, 9) * 255
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(rotate_and_shift(x, 0.0, 0.0, g), x, atol=1e-3)
    moved = rotate_and_shift(x, 180.0, 0.2, g)
    assert moved.shape == x.shape and not torch.allclose(moved, x)


class CornerDetector(nn.Module):
    """Penultimate features: the image's mean, and a strong response to a bright bottom-right corner (a
    backdoor feature that a rotation or shift takes away)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.stack([x.mean((1, 2, 3)), 50 * x[:, :, -3:, -3:].mean((1, 2, 3))], 1))


def test_dbr_sensitivity_flags_planted_poisons() -> None:
    from eigenguard.defenses.dbr import DBR

    data = tiny_dataset(400)
    images = data.images // 8  # dim images: a rotation moves a clean corner little
    poisons = torch.arange(0, 400, 20)  # 20 of 400 = 5%
    images[poisons, :, -3:, -3:] = 255  # the trigger
    data = ImageDataset(images, data.labels, data.classes)
    ctx = tiny_context(data, tiny_dataset(32, seed=1), poisoned=poisons)
    defense = DBR(poison_ratio=0.05)
    scores = defense.sensitivity(CornerDetector(), data, ctx)
    clean, flagged = defense.split(scores)
    assert set(flagged.tolist()) == set(poisons.tolist())
    assert len(clean) == 81 and not set(clean.tolist()) & set(poisons.tolist())


# -- D-ST --------------------------------------------------------------------------------------------


def test_dst_consistency_supcon_matches_its_definition() -> None:
    from eigenguard.defenses.dst import consistency_supcon

    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(8, 5), dim=1)  # 4 images, 2 views
    labels, clean = torch.tensor([0, 0, 1, 0]), torch.tensor([True, False, True, True])
    total = 0.0
    for i in range(8):
        others = [j for j in range(8) if j != i]
        denominator = math.log(sum(math.exp(float(z[i] @ z[j]) / 0.1) for j in others))
        same_label = [j for j in others if labels[j % 4] == labels[i % 4]]
        positives = same_label if clean[i % 4] else [(i + 4) % 8]
        total += -sum(float(z[i] @ z[j]) / 0.1 - denominator for j in positives) / len(positives)
    assert consistency_supcon(z, labels, clean, 0.1).item() == pytest.approx(0.1 / 0.07 * total / 8, rel=1e-5)


def test_contrastive_augmentations() -> None:
    from eigenguard.data.transforms import color_jitter, random_resized_crop

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(random_resized_crop(x, g, scale=(1.0, 1.0), ratio=(1.0, 1.0)), x)
    assert torch.equal(color_jitter(x, g, p=0.0, grayscale_p=0.0), x)
    grey = color_jitter(x, g, p=0.0, grayscale_p=1.0)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    jittered = color_jitter(x, g, p=1.0, grayscale_p=0.0)
    assert jittered.dtype == torch.uint8 and not torch.equal(jittered, x)
    crops = random_resized_crop(x, g)
    assert crops.shape == x.shape and not torch.equal(crops, x)


# -- ASD ---------------------------------------------------------------------------------------------


def test_asd_symmetric_ce_and_sharpen() -> None:
    from eigenguard.defenses.asd import sharpen, symmetric_ce

    logits, labels = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 2])
    p = logits.softmax(1)
    expected = 0.1 * -p[[0, 1], labels].log() + -math.log(1e-4) * (1 - p[[0, 1], labels])
    assert torch.allclose(symmetric_ce(logits, labels), expected)
    q = sharpen(torch.tensor([[0.6, 0.3, 0.1]]), 0.5)
    assert (
        torch.allclose(q.sum(1), torch.ones(1)) and q[0, 0] > 0.6 and torch.allclose(q, torch.tensor([[36, 9, 1]]) / 46)
    )


def test_asd_split_follows_its_three_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    from eigenguard.defenses.asd import ASD

    data = tiny_dataset(400)  # 4 classes of 100
    ctx = tiny_context(data, tiny_dataset(64, seed=1))
    asd = ASD(clean_fraction=0.5)
    losses = iter([])
    monkeypatch.setattr(ASD, "losses", lambda self, model, d, c: next(losses))
    monkeypatch.setattr(ASD, "_virtual_epoch", lambda self, virtual, c: None)
    model = nn.Linear(1, 1)
    base = torch.arange(400, dtype=torch.float32).flip(0)  # the highest indices have the lowest loss
    losses = iter([base])
    # stage 1 (epochs 0-3 of 8): step (12 * 2) // 4 = 6 -> 6 * 10 * 100 / 5000 = 1.2 -> 1 per class
    chosen = asd.clean_pool(model, 2, 8, ctx)
    assert [int(data.labels[i]) for i in chosen] == [0, 1, 2, 3] and chosen.tolist() == [396, 397, 398, 399]
    losses = iter([base])  # stage 2 (epochs 4-5): the lowest-loss half
    assert asd.clean_pool(model, 4, 8, ctx).tolist() == list(range(200, 400))
    # stage 3 (epochs 6-7): the half whose loss fell least under the virtual model
    fell = torch.zeros(400)
    fell[:200] = 5.0  # the first 200 fell by 5, the rest by 0
    losses = iter([base, base - fell])
    assert asd.clean_pool(model, 6, 8, ctx).tolist() == list(range(200, 400))


def test_asd_seeds_are_the_defenders_clean_images() -> None:
    from eigenguard.defenses.asd import ASD

    clean = tiny_dataset(64, seed=1)
    ctx = tiny_context(tiny_dataset(100), clean)
    seeds = ASD(seeds_per_class=3).seeds(ctx)
    assert len(seeds) == 12 and torch.bincount(seeds.labels).tolist() == [3, 3, 3, 3]
    assert all(any(torch.equal(img, c) for c in clean.images) for img in seeds.images)


def test_defense_options_are_checked() -> None:
    with pytest.raises(EigenguardError, match="unknown option 'eps' for defense 'anp'; allowed: epsilon"):
        create_defense("anp", eps=0.3)
    with pytest.raises(EigenguardError, match="option epochs = 0 for defense 'ft'; allowed: a whole number >= 1"):
        create_defense("ft", epochs=0)
    expected = {
        "none",
        "eigenguard",
        "ft",
        "anp",
        "abl",
        "ss",
        "fp",
        "nad",
        "clp",
        "d-br",
        "d-st",
        "asd",
        "pdb",
        "sieve",
        "cbd",
        "inversion",
        "dimension-edit",
    }
    assert expected == set(DEFENSES.names())


# -- the backdoored-model cache and every defense end to end ------------------------------------------


def defended(
    root: Path, out: Path, cache: Path, defense: str, options: dict | None = None, **overrides: object
) -> TrainConfig:
    values: dict = {
        "dataset": "mnist", "data_root": str(root), "model": "resnet18", "width": 0.125,
        "epochs": 2, "batch_size": 64, "lr": 0.05, "attack": "badnets", "train_subset": None, "device": "cpu",
        "clean_samples": 50, "cache_dir": str(cache), "out": str(out), "defense": {"name": defense, **(options or {})},
    }  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def entries_in(cache: Path) -> list[Path]:
    """The cache's backdoored-model entries (not the hidden lock files beside them)."""
    return [p for p in (cache / "backdoored").iterdir() if not p.name.startswith(".")]


@pytest.mark.slow
def test_backdoored_model_is_trained_once_and_reused(mnist_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = train(defended(mnist_root, tmp_path / "ft", cache, "ft", options={"epochs": 1}), progress=False)
    assert first.metrics["backdoored_cache_hit"] is False
    entries = entries_in(cache)
    assert len(entries) == 1 and (entries[0] / "metrics.json").exists()
    # another post-training defense, another defense option: the same backdoored model, not retrained
    second = train(defended(mnist_root, tmp_path / "nad", cache, "nad", options={"epochs": 1}), progress=False)
    assert second.metrics["backdoored_cache_hit"] is True
    assert second.metrics["backdoored_acc"] == first.metrics["backdoored_acc"]
    assert len(entries_in(cache)) == 1
    # the stored model is the no-defense run of the same configuration, bit for bit
    plain = train(defended(mnist_root, tmp_path / "plain", cache, "none"), progress=False)
    stored = load_file(entries[0] / "model.safetensors")
    assert all(torch.equal(stored[k], v) for k, v in load_file(tmp_path / "plain" / "model.safetensors").items())
    assert plain.metrics["defense_cost_vs_plain"] is not None
    # and a plain run fills the cache itself: a defense after it starts from its model
    other = tmp_path / "cache2"
    train(defended(mnist_root, tmp_path / "plain2", other, "none"), progress=False)
    assert len(entries_in(other)) == 1
    after = train(defended(mnist_root, tmp_path / "ft3", other, "ft", options={"epochs": 1}), progress=False)
    assert after.metrics["backdoored_cache_hit"] is True
    # a setting that changes the weights gives a new entry
    train(defended(mnist_root, tmp_path / "ft2", cache, "ft", lr=0.02, options={"epochs": 1}), progress=False)
    assert len(entries_in(cache)) == 2


@pytest.mark.parametrize(
    ("defense", "options"),
    [
        ("ft", {"epochs": 1}),
        ("anp", {"iterations": 5, "batch_size": 16}),
        ("abl", {}),
        ("ss", {}),
        ("fp", {"epochs": 1}),
        ("nad", {"teacher_epochs": 1, "epochs": 1}),
        ("clp", {}),
        ("d-br", {"sd_epochs": 1, "intra_epochs": 1, "epochs": 2}),
        ("asd", {"epochs": 4, "iterations": 2}),
        ("d-st", {"sd_epochs": 1, "intra_epochs": 1, "st_epochs": 1, "head_epochs": 1, "st_batch_size": 64}),
        ("pdb", {}),
        ("sieve", {"sieve_epochs": 1, "then": "pdb"}),
        ("cbd", {"backdoor_epochs": 1}),
        ("inversion", {"steps": 3, "images": 64}),
    ],
)
def test_every_defense_runs_end_to_end(defense: str, options: dict, mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(defended(mnist_root, out, tmp_path / "cache", defense, options), progress=False)
    m = result.metrics
    assert 0 <= m["acc"] <= 1 and 0 <= m["asr"] <= 1
    assert m["defense"]["name"] == defense and m["defense_seconds"] > 0 and m["clean_images"] == 50
    assert (m["defense_cost_vs_plain"] is not None) == DEFENSES.get(defense).needs_backdoored
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("phase,")
    if defense == "abl":
        assert [r.split(",")[0] for r in rows[1:]] == ["isolate", "train-rest", "unlearn"]
        assert set(m["defense_report"]["isolation"]) == {"flagged", "flagged_poisoned", "precision", "recall"}
        assert m["defense_report"]["isolation"]["flagged"] == 54  # 10% of 540
    if defense == "ss":
        assert m["defense_report"]["removal"]["flagged"] >= 54
    if defense == "fp":
        weight = load_file(out / "model.safetensors")["head.2.weight"]
        zero_columns = int((weight == 0).all(dim=0).sum())
        assert zero_columns == m["defense_report"]["pruned_channels"]
        assert classifier(result.model).weight.shape[1] == m["defense_report"]["channels"]
    if defense == "anp":
        assert m["defense_report"]["neurons"] > 0
    assert json.loads((out / "metrics.json").read_text())["defense_report"] == json.loads(
        json.dumps(m["defense_report"])
    )
    # what the defense set aside, image by image, matches its report's count and the poisons among them
    aside = {"abl": "isolation", "ss": "removal", "d-br": "poison_split", "d-st": "poison_split", "sieve": "split"}
    aside["inversion"] = "split"
    if defense in aside:
        listed = list(csv.DictReader((out / "set_aside.csv").open()))
        found = m["defense_report"][aside[defense]]
        assert len(listed) == found["flagged"] and sum(int(r["poisoned"]) for r in listed) == found["flagged_poisoned"]
        assert len({r["index"] for r in listed}) == len(listed) and all(r["set_aside"] for r in listed)
        assert defense in ("inversion", "sieve") or len(listed) > 0  # those two may find nothing on tiny data
    else:
        assert not (out / "set_aside.csv").exists()


def test_inversion_with_nothing_named_returns_the_model_it_read_without_a_second_training(
    mnist_root: Path, tmp_path: Path
) -> None:
    options = {"steps": 1, "images": 16, "budget": 1e-3}  # too small to reach any class: no target
    result = train(defended(mnist_root, tmp_path / "run", tmp_path / "cache", "inversion", options), progress=False)
    report = result.metrics["defense_report"]
    assert report["estimated_target"] is None and report["split"]["flagged"] == 0 and not report["retrained"]
    assert result.metrics["acc"] == pytest.approx(result.metrics["backdoored_acc"], abs=1e-6)  # the same weights
    assert "retrain" not in (tmp_path / "run" / "log.csv").read_text()
    # it asked for the model twice (to read, to return): trained here once, and not counted as its own time
    m = result.metrics
    assert m["backdoored_cache_hit"] is False and m["defense_seconds"] < m["total_seconds"] - m["plain_train_seconds"]


def test_inversion_reading_a_short_model_trains_it_itself_and_the_whole_recipe_where_nothing_is_named(
    mnist_root: Path, tmp_path: Path
) -> None:
    options = {"steps": 1, "images": 16, "budget": 1e-3, "read_epochs": 1}
    result = train(defended(mnist_root, tmp_path / "run", tmp_path / "cache", "inversion", options), progress=False)
    report = result.metrics["defense_report"]
    assert report["estimated_target"] is None and not report["retrained"]
    assert report["reader"]["epochs"] == 1 and 0 <= report["reader"]["acc"] <= 1
    phases = [row.split(",")[0] for row in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert phases == ["read", "train", "train"]  # one short epoch read, then the recipe's two on every image
    assert not (tmp_path / "cache" / "backdoored").exists() or not entries_in(tmp_path / "cache")


@pytest.mark.slow
def test_dst_reuses_dbrs_distinguishing_model_with_the_same_result(mnist_root: Path, tmp_path: Path) -> None:
    """D-BR and D-ST of one setting train the SD model once; a cache hit gives D-ST the same weights,
    metrics and log as training it, and another SD option or seed is another entry."""
    sd = {"sd_epochs": 1, "intra_epochs": 1}
    dst = {**sd, "st_epochs": 1, "head_epochs": 1, "st_batch_size": 64}
    alone = train(defended(mnist_root, tmp_path / "alone", tmp_path / "c1", "d-st", dst), progress=False)
    assert alone.metrics["defense_report"]["sd_cached"] is False
    shared = tmp_path / "c2"
    dbr = train(defended(mnist_root, tmp_path / "dbr", shared, "d-br", {**sd, "epochs": 1}), progress=False)
    assert dbr.metrics["defense_report"]["sd_cached"] is False
    after = train(defended(mnist_root, tmp_path / "after", shared, "d-st", dst), progress=False)
    report, first = after.metrics["defense_report"], alone.metrics["defense_report"]
    assert report.pop("sd_cached") is True and first.pop("sd_cached") is False
    assert report.pop("sd_seconds") == dbr.metrics["defense_report"]["sd_seconds"] > 0 and first.pop("sd_seconds") > 0
    assert report == first  # the same split
    for name in ("alone", "after"):
        assert "sd-intra" in (tmp_path / name / "log.csv").read_text()
    wa, wb = (load_file(tmp_path / n / "model.safetensors") for n in ("alone", "after"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (after.metrics["acc"], after.metrics["asr"]) == (alone.metrics["acc"], alone.metrics["asr"])
    logs = [(tmp_path / n / "log.csv").read_text().splitlines() for n in ("alone", "after")]
    strip = [[",".join(r.split(",")[:-1]) for r in log] for log in logs]  # epoch_seconds: the last column
    assert logs[0][0] == logs[1][0] and logs[0][0].endswith("epoch_seconds") and strip[0] == strip[1]
    train(defended(mnist_root, tmp_path / "other", shared, "d-st", {**dst, "sd_lr": 0.02}), progress=False)
    train(defended(mnist_root, tmp_path / "seed", shared, "d-st", dst, seed=1), progress=False)
    assert len(list((shared / "d-br-sd").glob("*.safetensors"))) == 3


def test_clean_samples_beyond_the_defense_split_is_an_error_only_for_defenses_that_use_them(
    mnist_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(EigenguardError, match="clean_samples 500 is more than the 60 images"):
        train(defended(mnist_root, tmp_path / "a", tmp_path / "c", "ft", clean_samples=500), progress=False)
    assert not (tmp_path / "a").exists()
    result = train(
        defended(mnist_root, tmp_path / "b", tmp_path / "c", "none", clean_samples=500, epochs=1), progress=False
    )
    assert result.metrics["clean_images"] == 60


def test_backdoored_key_ignores_how_the_device_was_named() -> None:
    """ "auto" and "cpu" are the same machine here: one cache entry, so grid cells (pinned to "cpu") and
    CLI runs ("auto") share the backdoored model. The device type itself is part of the key."""
    from eigenguard.pipeline.backdoored import backdoored_entry

    data = ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4) % 2, ["a", "b"], (0.5,), (0.5,))
    other = ImageDataset(torch.ones(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4) % 2, ["a", "b"], (0.5,), (0.5,))
    auto = TrainConfig(profile="quick", device="auto")
    cpu = TrainConfig(profile="quick", device="cpu", defense="ft", eval_every=5)
    key = backdoored_entry(auto, data, torch.device("cpu"))
    assert key == backdoored_entry(cpu, data, torch.device("cpu"))
    assert key != backdoored_entry(auto, data, torch.device("meta"))
    assert key != backdoored_entry(auto, other, torch.device("cpu"))
    assert key != backdoored_entry(TrainConfig(profile="quick", lr=0.05), data, torch.device("cpu"))
