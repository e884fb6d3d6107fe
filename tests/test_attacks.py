import pytest
import torch

from eigenguard.attacks import ATTACKS, BadNets, Blend, create_attack
from eigenguard.data.image_dataset import ImageDataset
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
    with pytest.raises(EigenguardError, match=r"\[0, 1\)"):
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
    with pytest.raises(EigenguardError, match="unknown attack 'nope'; allowed: badnets, blend"):
        create_attack("nope", (3, 8, 8))
    assert {"badnets", "blend"} <= set(ATTACKS.names())
