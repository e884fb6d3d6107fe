import pytest
import torch

from eigenguard.data.split import defense_split
from eigenguard.data.transforms import Normalize, random_crop, random_flip
from eigenguard.training.schedule import lr_multiplier


def reference_crop(images: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    padded = torch.nn.functional.pad(images, (pad,) * 4)
    h, w = images.shape[2:]
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(len(images))])


@pytest.mark.parametrize("channels", [3, 1])
def test_random_crop_matches_per_image_reference(channels: int) -> None:
    images = torch.randint(0, 256, (15, channels, 10, 12), dtype=torch.uint8)
    out = random_crop(images, 4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 9, (15,), generator=g)
    dx = torch.randint(0, 9, (15,), generator=g)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, reference_crop(images, 4, dy, dx))
    # channels_last for colour; one channel with plain NCHW strides, not the ambiguous (HW, 1, W, 1) that
    # oneDNN's CPU backward corrupts memory on at odd batch sizes (AVX-512, torch 2.14.1)
    expected = images.contiguous(memory_format=torch.channels_last) if channels > 1 else images.contiguous()
    assert out.stride() == expected.stride()


def test_a_one_channel_training_step_at_an_odd_batch_size() -> None:
    # the crash random_crop's strides avoid: it took the process down on an AVX-512 machine (batch 27)
    from eigenguard.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=10, width=0.125)
    x = random_crop(torch.randint(0, 256, (27, 1, 28, 28), dtype=torch.uint8), 2, torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(model(x.float() / 255), torch.randint(0, 10, (27,)))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_random_flip_flips_about_half() -> None:
    images = torch.arange(2 * 1 * 2 * 3, dtype=torch.uint8).view(2, 1, 2, 3).repeat(200, 1, 1, 1)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = (out == images.flip(3)).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert (flipped | kept).all()
    assert 150 < flipped.sum() < 250


def test_normalize() -> None:
    norm = Normalize((0.5, 0.25), (0.5, 0.25), torch.device("cpu"))
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).repeat(1, 2, 1, 1)
    y = norm(x)
    assert torch.allclose(y[0, 0, 0], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(y[0, 1, 0], torch.tensor([-1.0, 3.0]))


def test_schedules() -> None:
    cos = lr_multiplier("cosine", 100, 10)
    assert cos(0) == 0.1 and cos(9) == 1.0 and abs(cos(99)) < 0.01
    step = lr_multiplier("multistep", 100, 0)
    assert step(0) == 1.0 and abs(step(50) - 0.1) < 1e-12 and abs(step(80) - 0.01) < 1e-12
    assert lr_multiplier("constant", 10, 0)(9) == 1.0


def test_defense_split_deterministic_disjoint_nested() -> None:
    a = defense_split(1000, 0.1, seed=0)
    assert len(a.defense) == 100 and len(a.train) == 900
    assert len(torch.cat([a.train, a.defense]).unique()) == 1000
    assert torch.equal(a.train, defense_split(1000, 0.1, seed=0).train)
    assert not torch.equal(a.train, defense_split(1000, 0.1, seed=1).train)
    small = defense_split(1000, 0.1, seed=0, train_subset=300)
    assert len(small.train) == 300 and torch.equal(small.defense, a.defense)
    assert set(small.train.tolist()) <= set(a.train.tolist())
