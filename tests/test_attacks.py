import math
from pathlib import Path

import pytest
import torch

from eigenguard.attacks import (
    ATTACKS,
    SIG,
    BadNets,
    Blend,
    CleanLabel,
    MultiTrigger,
    WaNet,
    attack_options,
    create_attack,
)
from eigenguard.attacks.badnets import CHECKERBOARD
from eigenguard.attacks.pgd import adversarial_training_loss, pgd_linf
from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize
from eigenguard.errors import EigenguardError


def dataset(n: int = 100, shape: tuple[int, int, int] = (3, 8, 8), seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return ImageDataset(images, labels, [str(i) for i in range(10)])


def test_badnets_trigger_pixels_exact() -> None:
    images = torch.full((2, 3, 8, 8), 7, dtype=torch.uint8)
    out = BadNets((3, 8, 8)).apply(images)
    expected = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    for c in range(3):
        assert torch.equal(out[0, c, 5:, 5:], expected)
    # nothing outside the 3x3 corner changes
    out[:, :, 5:, 5:] = 7
    assert torch.equal(out, images)


def test_a_larger_badnets_patch_tiles_the_pattern_in_the_named_corner() -> None:
    """The stress-test setting: 7x7 top-left is exactly where PDB stamps its defensive trigger."""
    out = BadNets((1, 28, 28), size=7, corner="tl").apply(torch.full((1, 1, 28, 28), 7, dtype=torch.uint8))
    expected = torch.tensor(CHECKERBOARD, dtype=torch.uint8)[torch.arange(7) % 3][:, torch.arange(7) % 3]
    assert torch.equal(out[0, 0, :7, :7], expected)
    out[0, 0, :7, :7] = 7
    assert (out == 7).all()
    assert BadNets((1, 28, 28)).describe()["size"] == 3
    for bad, message in (({"size": 0}, "size = 0"), ({"size": 29}, "1..28"), ({"corner": "c"}, "corner = 'c'")):
        with pytest.raises(EigenguardError, match=message):
            BadNets((1, 28, 28), **bad)


def test_badnets_single_channel() -> None:
    out = BadNets((1, 28, 28)).apply(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    assert out[0, 0, 27, 27] == 255 and out[0, 0, 27, 26] == 0 and out[0, 0, 26, 26] == 255
    assert out.sum() == 255 * 4


def test_blend_formula_and_seeded_pattern() -> None:
    attack = Blend((3, 8, 8), seed=5, alpha=0.2)
    assert torch.equal(attack.pattern, Blend((3, 8, 8), seed=5).pattern)
    assert not torch.equal(attack.pattern, Blend((3, 8, 8), seed=6).pattern)
    assert attack.pattern.dtype == torch.uint8 and attack.pattern.min() >= 0
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = attack.apply(x)
    expected = (0.2 * attack.pattern.double() + 0.8 * x.double()).round()
    assert (out.double() - expected).abs().max() <= 1  # float32 vs float64 rounding at .5
    assert out.dtype == torch.uint8


def test_blend_rejects_bad_alpha() -> None:
    with pytest.raises(EigenguardError, match="alpha"):
        Blend((3, 8, 8), alpha=1.5)


@pytest.mark.parametrize("name", ["badnets", "blend"])
def test_poison_bookkeeping(name: str) -> None:
    data = dataset(200)
    attack = create_attack(name, data.image_shape, target=3)
    result = attack.poison(data, 0.1, torch.Generator().manual_seed(0))
    idx = result.poison_indices
    assert len(idx) == 20 and torch.equal(idx, idx.sort().values) and len(idx.unique()) == 20
    # drawn from non-target classes, relabelled to the target
    assert (result.original_labels[idx] != 3).all()
    assert (result.dataset.labels[idx] == 3).all()
    # exactly the poisoned samples changed, and they carry the trigger
    clean = ~result.is_poisoned
    assert torch.equal(result.dataset.images[clean], data.images[clean])
    assert torch.equal(result.dataset.labels[clean], data.labels[clean])
    assert torch.equal(result.dataset.images[idx], attack.apply(data.images[idx]))
    # the input dataset is untouched
    assert not torch.equal(result.dataset.images, data.images)


def test_poison_is_deterministic_per_seed() -> None:
    data = dataset(500)
    attack = BadNets(data.image_shape)
    a = attack.poison(data, 0.1, torch.Generator().manual_seed(1)).poison_indices
    b = attack.poison(data, 0.1, torch.Generator().manual_seed(1)).poison_indices
    c = attack.poison(data, 0.1, torch.Generator().manual_seed(2)).poison_indices
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_poison_rate_zero_and_errors() -> None:
    data = dataset(100)
    attack = BadNets(data.image_shape)
    assert len(attack.poison(data, 0.0, torch.Generator()).poison_indices) == 0
    with pytest.raises(EigenguardError, match=r"\[0, 1\]"):
        attack.poison(data, 1.5, torch.Generator())
    with pytest.raises(EigenguardError, match="eligible"):
        attack.poison(data, 1.0, torch.Generator())
    with pytest.raises(EigenguardError, match="eligible"):
        attack.poison(data, 0.95, torch.Generator())  # only 90 non-target samples
    with pytest.raises(EigenguardError, match="target class 12"):
        BadNets(data.image_shape, target=12).poison(data, 0.1, torch.Generator())
    with pytest.raises(EigenguardError, match="shape"):
        BadNets((1, 8, 8)).poison(data, 0.1, torch.Generator())


def test_asr_test_set() -> None:
    data = dataset(100)
    attack = BadNets(data.image_shape, target=0)
    asr = attack.asr_test_set(data)
    assert len(asr) == 90 and (asr.labels == 0).all()
    assert torch.equal(asr.images, attack.apply(data.images[data.labels != 0]))


def test_registry_errors_list_allowed() -> None:
    allowed = "adap-blend, adap-patch, badnets, badnets-all2all, blend, bpp, clb"
    with pytest.raises(EigenguardError, match=f"unknown attack 'nope'; allowed: {allowed}"):
        create_attack("nope", (3, 8, 8))
    assert {"badnets", "blend"} <= set(ATTACKS.names())


# -- SIG ---------------------------------------------------------------------------------------------


def test_sig_adds_the_sinusoid_along_the_width_and_clips() -> None:
    w = 32
    images = torch.full((2, 3, 8, w), 100, dtype=torch.uint8)
    images[1] = 250  # near the top: the positive half-waves clip at 255
    out = SIG((3, 8, w)).apply(images)
    j = torch.arange(w, dtype=torch.float64)
    signal = 20 * torch.sin(2 * math.pi * j * 6 / w)
    expected0 = (100 + signal).round().clamp(0, 255)
    expected1 = (250 + signal).round().clamp(0, 255)
    for c in range(3):
        for row in range(8):  # constant down each column, the same on every channel
            assert torch.equal(out[0, c, row].double(), expected0)
            assert torch.equal(out[1, c, row].double(), expected1)
    assert out[1].max() == 255 and out[0].max() == 120 and out[0].min() == 80


def test_sig_parameters() -> None:
    out = SIG((1, 4, 8), delta=10, freq=1).apply(torch.full((1, 1, 4, 8), 50, dtype=torch.uint8))
    assert out[0, 0, 0, 2] == 60 and out[0, 0, 0, 6] == 40 and out[0, 0, 0, 0] == 50  # sin(pi/2), sin(3pi/2)
    with pytest.raises(EigenguardError, match="delta"):
        SIG((1, 4, 8), delta=0)
    with pytest.raises(EigenguardError, match=r"option freq = 6.0 for attack 'sig'; allowed: below 6"):
        SIG((1, 12, 12))


@pytest.mark.parametrize("name", ["sig", "clb"])
def test_clean_label_attacks_keep_labels_and_poison_the_target_class(name: str, tmp_path: Path) -> None:
    data = dataset(200, shape=(1, 16, 16))
    options = {"cache_dir": str(tmp_path), **TINY_CLB} if name == "clb" else {}
    attack = create_attack(name, data.image_shape, target=3, **options)
    result = attack.poison(data, 0.8, torch.Generator().manual_seed(0))
    idx = result.poison_indices
    assert len(idx) == 16  # 80% of the 20 target-class samples
    assert (data.labels[idx] == 3).all()
    assert torch.equal(result.dataset.labels, data.labels)  # no label changes anywhere
    assert not torch.equal(result.dataset.images[idx], data.images[idx])
    assert torch.equal(result.dataset.images[~result.is_poisoned], data.images[~result.is_poisoned])
    asr = attack.asr_test_set(data)
    assert len(asr) == 180 and (asr.labels == 3).all()
    assert attack.rate_of == "target class"


# -- CLB ---------------------------------------------------------------------------------------------

TINY_CLB = {"surrogate_width": 0.0625, "surrogate_epochs": 1, "pgd_steps": 2, "surrogate_pgd_steps": 1}


def test_clb_four_corner_trigger_pixels() -> None:
    out = CleanLabel((3, 10, 10)).apply(torch.full((1, 3, 10, 10), 7, dtype=torch.uint8))[0]
    right = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    left = torch.tensor([[255, 0, 0], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)  # horizontal mirror
    for c in range(3):
        assert torch.equal(out[c, :3, 7:], right) and torch.equal(out[c, 7:, 7:], right)
        assert torch.equal(out[c, :3, :3], left) and torch.equal(out[c, 7:, :3], left)
    out[:, :3, :3] = out[:, :3, 7:] = out[:, 7:, :3] = out[:, 7:, 7:] = 7
    assert (out == 7).all()  # nothing else changes


@pytest.mark.parametrize("unperturbed", [{"epsilon": 0.0}, {"pgd_steps": 0}], ids=["epsilon-0", "steps-0"])
def test_clb_without_perturbation_stamps_clean_images_and_trains_no_surrogate(
    tmp_path: Path, unperturbed: dict[str, float]
) -> None:
    data = dataset(200, shape=(1, 12, 12))
    attack = CleanLabel(data.image_shape, target=2, cache_dir=str(tmp_path), **{**TINY_CLB, **unperturbed})
    out = attack.poison(data, 0.8, torch.Generator().manual_seed(0))
    idx = out.poison_indices
    assert len(idx) > 0 and torch.equal(out.dataset.images[idx], attack.apply(data.images[idx]))
    assert not list(tmp_path.rglob("surrogate-*")) and attack.describe()["surrogate"] is None
    # the surrogate's recipe does not decide these images, so it does not enter their key
    other = CleanLabel(data.image_shape, target=2, cache_dir=str(tmp_path), **{**TINY_CLB, **unperturbed,
                       "surrogate_epochs": 3})  # fmt: skip
    other.poison(data, 0.8, torch.Generator().manual_seed(0))
    assert other.cache_hit is True and other.cache_file == attack.cache_file


def test_clb_perturbation_stays_in_budget_and_cache_is_reused(tmp_path: Path) -> None:
    data = dataset(200, shape=(1, 12, 12))
    first, said = CleanLabel(data.image_shape, target=2, cache_dir=str(tmp_path), **TINY_CLB), []
    first.say = said.append
    a = first.poison(data, 0.8, torch.Generator().manual_seed(0))
    assert first.cache_hit is False and first.cache_file is not None and first.cache_file.exists()
    assert [line.split()[:3] for line in said] == [["clean-label", "surrogate", "1/1"]]  # a line an epoch
    idx = a.poison_indices
    inside = ~first.mask  # the perturbation, away from the trigger corners
    diff = (a.dataset.images[idx].int() - data.images[idx].int()).abs()
    assert diff[:, inside].max() <= 16 and diff[:, inside].max() > 0
    assert torch.equal(a.dataset.images[idx][:, first.mask], first.apply(data.images[idx])[:, first.mask])
    assert {"surrogate_train_acc", "surrogate_acc_target_pgd"} <= set(first.describe())

    # second run, same parameters and data: served from the cache, same images
    second = CleanLabel(data.image_shape, target=2, cache_dir=str(tmp_path), **TINY_CLB)
    b = second.poison(data, 0.8, torch.Generator().manual_seed(0))
    assert second.cache_hit is True and second.cache_file == first.cache_file
    assert torch.equal(a.dataset.images, b.dataset.images)
    assert second.describe()["surrogate_train_acc"] == first.describe()["surrogate_train_acc"]

    # any parameter that affects the images, or the data itself, invalidates it
    for changed, other in [
        ({**TINY_CLB, "epsilon": 8 / 255}, data),
        ({**TINY_CLB, "pgd_steps": 3}, data),
        ({**TINY_CLB, "surrogate_epochs": 2}, data),
        ({**TINY_CLB, "surrogate_training": "standard"}, data),
        ({**TINY_CLB, "surrogate_epsilon": 4 / 255}, data),  # the default is 8/255, half of epsilon
        (TINY_CLB, dataset(200, shape=(1, 12, 12), seed=1)),
    ]:
        third = CleanLabel(data.image_shape, target=2, cache_dir=str(tmp_path), **changed)
        third.poison(other, 0.8, torch.Generator().manual_seed(0))
        assert third.cache_hit is False and third.cache_file != first.cache_file
    assert len(list((tmp_path / "clb").glob("clb-*.safetensors"))) == 7
    # entries that differ only in the PGD share a surrogate (pgd_steps; epsilon 8/255 with the default
    # surrogate_epsilon 4/255 and the explicit 4/255): 5 surrogate recipes for 7 entries
    assert len(list((tmp_path / "clb").glob("surrogate-*.safetensors"))) == 5


def test_clb_surrogate_killed_mid_training_resumes_from_its_last_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eigenguard.training.checkpoint import Checkpoints

    data, options = dataset(200, shape=(1, 12, 12)), {**TINY_CLB, "surrogate_epochs": 3}
    whole = CleanLabel(data.image_shape, target=2, cache_dir=str(tmp_path / "a"), **options)
    expected = whole.poison(data, 0.8, torch.Generator().manual_seed(0)).dataset.images
    save, saved = Checkpoints.save, []

    class Kill(BaseException):
        pass

    def stopping_save(self: Checkpoints, phase: str, epoch: int, *args: object, **kwargs: object) -> None:
        save(self, phase, epoch, *args, **kwargs)  # type: ignore[arg-type]
        saved.append(epoch)
        if epoch == 1 and len(saved) == 1:
            raise Kill

    monkeypatch.setattr(Checkpoints, "save", stopping_save)
    with pytest.raises(Kill):
        CleanLabel(data.image_shape, target=2, cache_dir=str(tmp_path / "b"), **options).poison(
            data, 0.8, torch.Generator().manual_seed(0)
        )
    (scratch,) = (tmp_path / "b" / "clb").glob(".training.surrogate-*")
    resumed = CleanLabel(data.image_shape, target=2, cache_dir=str(tmp_path / "b"), **options)
    images = resumed.poison(data, 0.8, torch.Generator().manual_seed(0)).dataset.images
    assert saved == [1, 2, 3]  # the second process trained epochs 2 and 3 only
    assert torch.equal(images, expected) and not scratch.exists()
    assert resumed.describe()["surrogate_train_acc"] == whole.describe()["surrogate_train_acc"]


def test_pgd_raises_the_loss_within_the_budget() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    images = torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(8) % 3
    norm = Normalize((0.5,), (0.5,), torch.device("cpu"))
    adv = pgd_linf(model, images, labels, norm, epsilon=8 / 255, steps=5, step_size=2 / 255)
    assert adv.dtype == torch.uint8 and (adv.int() - images.int()).abs().max() <= 8
    loss = lambda x: torch.nn.functional.cross_entropy(model(norm(x)), labels).item()  # noqa: E731
    assert loss(adv) > loss(images)


def test_adversarial_training_loss_attacks_inside_the_ball_and_the_pixel_range() -> None:
    torch.manual_seed(0)
    seen: list[torch.Tensor] = []
    linear = torch.nn.Linear(16, 3)

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach())
        return linear(x.flatten(1))

    norm = Normalize((0.25,), (0.5,), torch.device("cpu"))
    clean = norm(torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8))
    labels = torch.arange(8) % 3
    loss_fn = adversarial_training_loss(
        model, norm, epsilon=8 / 255, steps=4, generator=torch.Generator().manual_seed(0)
    )  # type: ignore[arg-type]
    loss = loss_fn(model(clean), labels, clean)
    assert len(seen) == 1 + 4 + 1  # the clean forward, 4 PGD steps, the final forward
    adv = seen[-1]
    budget = 8 / 255 / 0.5  # epsilon in normalised units
    assert (adv - clean).abs().max() <= budget + 1e-6 and (adv - clean).abs().max() > budget / 2
    assert adv.min() >= -0.5 - 1e-6 and adv.max() <= 1.5 + 1e-6  # (0 - 0.25) / 0.5 .. (1 - 0.25) / 0.5
    assert loss.item() > torch.nn.functional.cross_entropy(linear(clean.flatten(1)), labels).item()
    loss.backward()  # differentiable in the model's parameters, not in the attack
    assert linear.weight.grad is not None


def test_clb_bad_surrogate_options_are_one_line_errors() -> None:
    with pytest.raises(
        EigenguardError, match=r"surrogate_training = 'robust' for attack 'clb'; allowed: adversarial \|"
    ):
        CleanLabel((1, 8, 8), surrogate_training="robust")
    with pytest.raises(EigenguardError, match=r"surrogate_pgd_steps = 0 for attack .clb.; allowed: a whole number"):
        CleanLabel((1, 8, 8), surrogate_pgd_steps=0)


# -- BadNets all-to-all ------------------------------------------------------------------------------


def test_badnets_all_to_all_shifts_every_label() -> None:
    data = dataset(100)
    attack = create_attack("badnets-all2all", data.image_shape)
    result = attack.poison(data, 0.3, torch.Generator().manual_seed(0))
    idx = result.poison_indices
    assert len(idx) == 30
    assert torch.equal(result.dataset.labels[idx], (data.labels[idx] + 1) % 10)
    assert len(set(data.labels[idx].tolist())) > 1  # drawn from every class, the target included
    assert torch.equal(result.dataset.images[idx], BadNets(data.image_shape).apply(data.images[idx]))
    asr = attack.asr_test_set(data)
    assert len(asr) == 100 and torch.equal(asr.labels, (data.labels + 1) % 10)


# -- WaNet -------------------------------------------------------------------------------------------


def test_wanet_field_is_seeded_small_and_smooth() -> None:
    a, b, c = WaNet((1, 16, 16), seed=0), WaNet((1, 16, 16), seed=0), WaNet((1, 16, 16), seed=1)
    assert torch.equal(a.grid, b.grid) and not torch.equal(a.grid, c.grid)
    assert a.grid.abs().max() <= 1
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    shift_pixels = (a.grid - torch.stack([xs, ys], -1)) * 7.5  # grid units -> pixels (align_corners)
    assert 0 < shift_pixels.abs().max() < 3  # s = 0.5: a shift of about a pixel, no more
    # a grid with (almost) no strength is the identity warp
    assert torch.equal(WaNet((1, 16, 16), strength=1e-6).apply(images := dataset(4, (1, 16, 16)).images), images)
    # a stronger warp moves more pixels
    base = dataset(4, (1, 16, 16)).images
    weak = (WaNet((1, 16, 16), strength=0.5).apply(base).int() - base.int()).abs().float().mean()
    strong = (WaNet((1, 16, 16), strength=2.0).apply(base).int() - base.int()).abs().float().mean()
    assert 0 < weak < strong


def test_wanet_noise_mode_bookkeeping() -> None:
    data = dataset(200, shape=(1, 16, 16))
    attack = WaNet(data.image_shape, target=0)
    result = attack.poison(data, 0.1, torch.Generator().manual_seed(0))
    idx, cross = result.poison_indices, result.cross_indices
    assert len(idx) == 20 and len(cross) == 40  # cross_ratio 2
    assert not set(idx.tolist()) & set(cross.tolist())
    assert (result.dataset.labels[idx] == 0).all()
    assert torch.equal(result.dataset.labels[cross], data.labels[cross])  # noise samples keep their labels
    assert torch.equal(result.dataset.images[idx], attack.apply(data.images[idx]))
    assert not torch.equal(result.dataset.images[cross], attack.apply(data.images[cross]))  # field + noise
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[idx], untouched[cross] = False, False
    assert torch.equal(result.dataset.images[untouched], data.images[untouched])
    none = WaNet(data.image_shape, cross_ratio=0).poison(data, 0.1, torch.Generator().manual_seed(0))
    assert len(none.cross_indices) == 0


# -- the adaptive multi-trigger attack ---------------------------------------------------------------


def test_multi_trigger_patches() -> None:
    attack = MultiTrigger((3, 10, 10), m=7, seed=3)
    assert attack.patterns.shape == (7, 3, 10, 10) and attack.masks.sum(dim=(1, 2, 3)).eq(27).all()
    assert set(attack.patterns[attack.masks].unique().tolist()) <= {0, 255}
    for i in range(7):  # a 3x3 square at the recorded position, the same on every channel
        r, q = attack.positions[i].tolist()
        assert attack.masks[i, :, r : r + 3, q : q + 3].all()
        assert torch.equal(attack.patterns[i, 0], attack.patterns[i, 2])
    images = torch.full((15, 3, 10, 10), 7, dtype=torch.uint8)
    out = attack.apply(images)
    for j in range(15):  # image j carries trigger j mod m and nothing else
        expected = torch.where(attack.masks[j % 7], attack.patterns[j % 7], images[j])
        assert torch.equal(out[j], expected)
    assert not torch.equal(MultiTrigger((3, 10, 10), m=7, seed=4).patterns, attack.patterns)


def test_multi_trigger_blend_kind_and_budget_split() -> None:
    attack = MultiTrigger((1, 8, 8), m=4, kind="blend", alpha=0.1)
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    expected = (0.1 * attack.patterns[torch.arange(8) % 4].double() + 0.9 * x.double()).round()
    assert (attack.apply(x).double() - expected).abs().max() <= 1
    data = dataset(400, shape=(1, 8, 8))
    result = MultiTrigger((1, 8, 8), m=4).poison(data, 0.2, torch.Generator().manual_seed(0))
    assert len(result.poison_indices) == 80  # 20 per trigger
    with pytest.raises(EigenguardError, match=r"kind = 'x' for attack 'multi-trigger'; allowed: patch \| blend"):
        MultiTrigger((1, 8, 8), kind="x")
    with pytest.raises(EigenguardError, match="option m = 0 for attack"):
        MultiTrigger((1, 8, 8), m=0)


def test_unknown_attack_option_lists_allowed() -> None:
    with pytest.raises(EigenguardError, match="unknown option 'sigma' for attack 'sig'; allowed: delta, freq"):
        create_attack("sig", (1, 8, 8), sigma=3)
    with pytest.raises(
        EigenguardError, match=r"m = 'many' for attack 'multi-trigger'; allowed: a whole number \[1, 1000\]"
    ):
        create_attack("multi-trigger", (1, 8, 8), m="many")
    assert attack_options("wanet") == {"grid_k": 4, "strength": 0.5, "cross_ratio": 2.0}


# -- BppAttack -----------------------------------------------------------------------------------------


def reference_dither(image: list[list[list[float]]], levels: int) -> list[list[list[float]]]:
    """Floyd-Steinberg written out pixel by pixel, plain Python, for one C x H x W image."""
    step = 255 / (levels - 1)
    out = [[row[:] for row in channel] for channel in image]
    channels, height, width = len(out), len(out[0]), len(out[0][0])
    for y in range(height):
        for x in range(width):
            for c in range(channels):
                old = out[c][y][x]
                new = round(old / step) * step
                out[c][y][x] = new
                err = old - new
                if x + 1 < width:
                    out[c][y][x + 1] += err * 7 / 16
                if y + 1 < height:
                    if x > 0:
                        out[c][y + 1][x - 1] += err * 3 / 16
                    out[c][y + 1][x] += err * 5 / 16
                    if x + 1 < width:
                        out[c][y + 1][x + 1] += err * 1 / 16
    return out


def test_bpp_squeezes_to_the_levels_and_dithers_like_floyd_steinberg() -> None:
    from eigenguard.attacks.bpp import BppAttack, floyd_steinberg

    images = dataset(6, shape=(3, 7, 9)).images
    plain = BppAttack((3, 7, 9), squeeze_num=8, dithering=False).apply(images)
    levels = {round(k * 255 / 7) for k in range(8)}
    assert set(plain.unique().tolist()) <= levels
    assert (plain.int() - images.int()).abs().max() <= 255 / 14 + 0.5  # the nearest level
    # the vectorised dithering equals the pixel-by-pixel definition (the same float32 arithmetic order
    # is not promised, so within float rounding)
    ours = floyd_steinberg(images[:2].double(), 4)
    for n in range(2):
        expected = torch.tensor(reference_dither(images[n].double().tolist(), 4), dtype=torch.float64)
        assert torch.allclose(ours[n], expected, atol=1e-9)
    # what dithering is for: a flat grey of 100 squeezed to black and white stays 100 on average
    flat = torch.full((1, 1, 16, 16), 100, dtype=torch.uint8)
    assert BppAttack((1, 16, 16), squeeze_num=2, dithering=False).apply(flat).float().mean() == 0
    dithered = BppAttack((1, 16, 16), squeeze_num=2, dithering=True).apply(flat)
    assert set(dithered.unique().tolist()) == {0, 255} and abs(dithered.float().mean().item() - 100) < 10


def test_bpp_negatives_carry_another_images_residual_and_keep_their_labels() -> None:
    from eigenguard.attacks.bpp import BppAttack

    data = dataset(200, shape=(1, 8, 8))
    attack = BppAttack((1, 8, 8), target=0, squeeze_num=8, dithering=False)
    result = attack.poison(data, 0.1, torch.Generator().manual_seed(0))
    poisons, negatives = result.poison_indices, result.cross_indices
    assert len(poisons) == 20 and len(negatives) == 20  # negative_ratio 1
    assert not set(poisons.tolist()) & set(negatives.tolist())
    assert torch.equal(result.dataset.images[poisons], attack.apply(data.images[poisons]))
    assert (result.dataset.labels[poisons] == 0).all()
    assert torch.equal(result.dataset.labels[negatives], data.labels[negatives])
    moved = (result.dataset.images[negatives].int() - data.images[negatives].int()).abs()
    assert moved.max() <= 255 / 14 + 1 and moved.sum() > 0  # at most one level's half-step (plus rounding)
    assert not torch.equal(result.dataset.images[negatives], attack.apply(data.images[negatives]))
    untouched = torch.ones(200, dtype=torch.bool)
    untouched[poisons], untouched[negatives] = False, False
    assert torch.equal(result.dataset.images[untouched], data.images[untouched])
    asr = attack.asr_test_set(data)
    assert (asr.labels == 0).all() and len(asr) == 180
    with pytest.raises(EigenguardError, match=r"squeeze_num = 1 for attack 'bpp'; allowed: a whole number \[2, 255\]"):
        BppAttack((1, 8, 8), squeeze_num=1)


# -- Adap-Blend and Adap-Patch ---------------------------------------------------------------------------


def test_adap_blend_payload_and_cover_carry_half_the_trigger_and_tests_the_whole() -> None:
    from eigenguard.attacks.adap_blend import AdapBlend

    data = dataset(1000, shape=(1, 32, 32))
    attack = AdapBlend((1, 32, 32), target=0, seed=3)
    result = attack.poison(data, 0.01, torch.Generator().manual_seed(0))
    payload, cover = result.poison_indices, result.cross_indices
    assert len(payload) == 10 and len(cover) == 3  # rate 0.01 here; cover_rate 0.003 of 1000
    assert not set(payload.tolist()) & set(cover.tolist())
    assert (result.dataset.labels[payload] == 0).all() and (data.labels[payload] != 0).all()
    assert torch.equal(result.dataset.labels[cover], data.labels[cover]) and (data.labels[cover] != 0).all()
    t, x = attack.pattern.float(), data.images.float()
    full = (x + 0.15 * (t - x)).round()
    for i in [*payload.tolist(), *cover.tolist()]:
        out = result.dataset.images[i].float()
        blended = torch.isclose(out, full[i]) & ~torch.isclose(full[i], x[i])
        untouched = torch.isclose(out, x[i])
        assert (blended | untouched).all()
        # per 8 x 8 block: all blended or all untouched, and exactly 8 of the 16 blocks blended
        blocks = blended[0].reshape(4, 8, 4, 8).any(dim=(1, 3))
        assert int(blocks.sum()) == 8, blocks
    test = attack.apply(data.images[:5])
    assert torch.equal(test, (x[:5] + 0.2 * (t - x[:5])).round().to(torch.uint8))


def test_adap_patch_quarters_get_one_trigger_each_and_the_test_trigger_is_pasted() -> None:
    from eigenguard.attacks.adap_patch import AdapPatch

    data = dataset(2000, shape=(3, 32, 32))
    attack = AdapPatch((3, 32, 32), target=0)
    result = attack.poison(data, 0.004, torch.Generator().manual_seed(0))
    payload, cover = result.poison_indices, result.cross_indices
    assert len(payload) == 8 and len(cover) == 12
    assert torch.equal(result.dataset.labels[cover], data.labels[cover])
    for group in (payload, cover):
        for n, i in enumerate(group.tolist()):
            j = n * 4 // len(group)  # the quarter it falls in
            out, x = result.dataset.images[i].float(), data.images[i].float()
            m = attack.masks[j].float()
            expected = (x + attack.alphas[j] * m * (attack.patterns[j].float() - x)).round()
            assert torch.equal(out, expected)
            assert torch.equal(out[:, ~attack.masks[j]], x[:, ~attack.masks[j]])
    assert int(attack.masks[0].sum()) == 25 and int(attack.masks[2].sum()) == 36 and int(attack.masks[3].sum()) == 64
    assert 100 < int(attack.masks[1].sum()) < 169
    test = attack.apply(data.images[:4])
    assert torch.equal(
        test[:, :, 29:, 29:],
        torch.tensor(((255, 0, 255), (0, 255, 0), (255, 0, 255)), dtype=torch.uint8).expand(4, 3, 3, 3),
    )
    assert torch.equal(test[:, :, 27:29, 27:], attack.patterns[0][:, 27:29, 27:].expand(4, 3, 2, 5))
    assert torch.equal(test[:, :, 27:29, :5], attack.patterns[0][:, 27:29, 27:].expand(4, 3, 2, 5))  # its copy
    assert torch.equal(test[:, :, ~attack.test_mask], data.images[:4][:, :, ~attack.test_mask])


# -- Input-aware -------------------------------------------------------------------------------------------


def test_input_aware_networks_and_losses() -> None:
    from eigenguard.attacks.input_aware import InputAware, TriggerGenerator, diversity, rms, threshold

    for channels, width, steps in ((1, 16, 2), (3, 32, 3)):
        g = TriggerGenerator(channels, channels, width, steps)
        out = g(torch.rand(2, channels, 32, 32))
        assert out.shape == (2, channels, 32, 32) and out.min() > 0 and out.max() < 1
    assert threshold(torch.tensor(0.4)) < 0.02 and threshold(torch.tensor(0.6)) > 0.98
    a, b = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    assert diversity(a, b, a, 0.5 * b).item() == pytest.approx(2.0, rel=1e-5)  # |a-b| = 1, |pa-pb| = 0.5
    # two identical patterns (a saturated generator): a finite gradient, where sqrt's at 0 gave NaN weights
    pattern = torch.full((3, 1, 2, 2), 0.7, requires_grad=True)
    diversity(a, b, pattern, pattern.detach().clone()).backward()
    assert torch.isfinite(pattern.grad).all()
    with pytest.raises(EigenguardError, match="input-aware: the generator training's loss is nan at epoch 19"):
        InputAware._finite(torch.tensor(float("nan")), "generator", 19)  # never NaN triggers, stored as black
    # above the floor, value (and gradient) are exactly the unfloored ones, to the last bit
    x, y = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.rand(64, 1, 28, 28)
    assert torch.equal(rms(x - y), (x - y).pow(2).flatten(1).mean(1).sqrt())


def test_input_aware_poisons_carry_their_own_trigger_and_cross_samples_anothers(tmp_path: Path) -> None:
    from eigenguard.attacks.input_aware import InputAware

    data = dataset(200, shape=(1, 16, 16))
    options = {"mask_epochs": 1, "generator_epochs": 2, "batch_size": 20, "surrogate_width": 0.125}
    attack, said = InputAware((1, 16, 16), target=0, cache_dir=str(tmp_path), **options), []
    attack.say = said.append
    result = attack.poison(data, 0.1, torch.Generator().manual_seed(0))
    # a line an epoch of the generators' training, for the run's console (a bench cell's log)
    assert [line.split()[:3] for line in said] == [
        ["input-aware", "mask", "1/1"],
        ["input-aware", "generator", "1/2"],
        ["input-aware", "generator", "2/2"],
    ]
    poisons, cross = result.poison_indices, result.cross_indices
    assert len(poisons) == 20 and len(cross) == 20 and not set(poisons.tolist()) & set(cross.tolist())
    assert torch.equal(result.dataset.images[poisons], attack.apply(data.images[poisons]))
    assert (result.dataset.labels[poisons] == 0).all()
    assert torch.equal(result.dataset.labels[cross], data.labels[cross])
    assert not torch.equal(result.dataset.images[cross], attack.apply(data.images[cross]))  # someone else's trigger
    assert attack.pattern_net is not None
    with torch.no_grad():
        p = attack.pattern_net(data.images[:2].float() / 255)
    assert not torch.allclose(p[0], p[1])  # input-specific
    again, said = InputAware((1, 16, 16), target=0, cache_dir=str(tmp_path), **options), []
    again.say = said.append
    second = again.poison(data, 0.1, torch.Generator().manual_seed(0))
    assert again.describe()["cache_hit"] is True and torch.equal(second.dataset.images, result.dataset.images)
    assert said == []  # nothing trained
    # cross_ratio is poisoning, not the generators' training: the same cached G and M, no cross samples
    none_crossed = InputAware((1, 16, 16), target=0, cache_dir=str(tmp_path), **{**options, "cross_ratio": 0.0})
    third = none_crossed.poison(data, 0.1, torch.Generator().manual_seed(0))
    assert none_crossed.describe()["cache_hit"] is True and len(third.cross_indices) == 0
    assert torch.equal(third.dataset.images[poisons], result.dataset.images[poisons])
