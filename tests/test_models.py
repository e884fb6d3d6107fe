"""Model zoo: shapes, insertion points, width scaling, channels_last and error messages."""

import math

import pytest
import torch
from torch import Tensor, nn

from eigenguard.errors import EigenguardError
from eigenguard.models import MODELS, Backbone, create_model

NAMES = ["resnet18", "resnet34", "vgg16", "mobilenetv2"]

# Point -> (channels at width 1, stride) per model; spatial size at a point is ceil(H / stride).
RESNET_LAYOUT: dict[str, tuple[int, int]] = {
    "stem": (64, 1),
    "stage1": (64, 1),
    "stage2": (128, 2),
    "stage3": (256, 4),
    "stage4": (512, 8),
}
LAYOUT: dict[str, dict[str, tuple[int, int]]] = {
    "resnet18": RESNET_LAYOUT,
    "resnet34": RESNET_LAYOUT,
    "vgg16": {**RESNET_LAYOUT, "stage5": (512, 16)},
    "mobilenetv2": {
        "stem": (32, 1),
        "stage1": (24, 1),
        "stage2": (32, 2),
        "stage3": (96, 4),
        "stage4": (1280, 8),
    },
}

# Parameter counts at width 1.0, 10 classes (ResNet-18/34 and MobileNetV2 match the usual counts;
# VGG-16 is 4,224 below the common CIFAR version, whose convs carry a bias in front of BatchNorm).
FULL_PARAMS = {"resnet18": 11_173_962, "resnet34": 21_282_122, "vgg16": 14_724_042, "mobilenetv2": 2_236_682}

WIDTH = 0.125


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Scale(nn.Module):
    """Multiplies by a learnable scalar and counts its calls."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(value))
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x * self.weight


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_names() -> None:
    assert MODELS.names() == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 16)])
def test_forward_and_feature_shapes(name: str, channels: int, size: int) -> None:
    model = create_model(name, in_channels=channels, num_classes=7, width=WIDTH).eval()
    assert isinstance(model, Backbone)
    assert model.insertion_points == tuple(LAYOUT[name])
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        for point, (base, stride) in LAYOUT[name].items():
            side = math.ceil(size / stride)
            assert model.features(x, point).shape == (2, round(base * WIDTH), side, side), point


@pytest.mark.parametrize("name", NAMES)
def test_point_meanings_documented(name: str) -> None:
    model = create_model(name, width=WIDTH)
    assert tuple(type(model).POINT_MEANINGS) == model.insertion_points
    assert all(type(model).POINT_MEANINGS.values())


def test_stage1_is_before_first_downsampling() -> None:
    x = torch.randn(1, 3, 32, 32)
    for name in NAMES:
        model = create_model(name, width=WIDTH).eval()
        points = model.insertion_points
        sizes = [model.features(x, p).shape[-1] for p in points]
        assert sizes[points.index("stage1")] == 32 and sizes[points.index("stage2")] == 16, name


@pytest.mark.parametrize("name", NAMES)
def test_inserted_module_is_used(name: str) -> None:
    model = create_model(name, width=WIDTH).eval()
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(x1), model(x2))
        zero = Scale(0.0)
        model.insert("stage1", zero)
        assert model.points["stage1"] is zero
        assert torch.allclose(model(x1), model(x2))
        assert zero.calls == 2
        assert torch.count_nonzero(model.features(x1, "stage1")) == 0
        assert zero.calls == 3
    state = model.state_dict()
    assert "points.stage1.weight" in state
    assert sum(k.startswith("points.") for k in state) == 1


@pytest.mark.parametrize("name", NAMES)
def test_features_stops_at_point(name: str) -> None:
    model = create_model(name, width=WIDTH).eval()
    points = model.insertion_points
    recorders = {p: Scale(1.0) for p in points}
    for p, module in recorders.items():
        model.insert(p, module)
    with torch.no_grad():
        model.features(torch.randn(1, 3, 32, 32), "stage2")
    last = points.index("stage2")
    assert [recorders[p].calls for p in points] == [1] * (last + 1) + [0] * (len(points) - last - 1)


def test_features_matches_forward_prefix() -> None:
    model = create_model("resnet18", width=WIDTH).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.head(model.features(x, "stage4")), model(x))


def test_unknown_point_raises() -> None:
    model = create_model("resnet18", width=WIDTH)
    with pytest.raises(EigenguardError, match=r"unknown insertion point 'stage9'.*stem, stage1, stage2"):
        model.insert("stage9", nn.Identity())
    with pytest.raises(EigenguardError, match="stage4"):
        model.features(torch.randn(1, 3, 32, 32), "head")
    with pytest.raises(EigenguardError, match=r"nn\.Module"):
        model.insert("stage1", lambda x: x)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous(name: str) -> None:
    model = create_model(name, width=0.25).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_trains(name: str) -> None:
    model = create_model(name, in_channels=1, width=WIDTH).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 1, 28, 28).to(memory_format=torch.channels_last)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_full_width_parameter_count(name: str) -> None:
    assert n_params(create_model(name)) == FULL_PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_width_scaling(name: str) -> None:
    quarter, half = create_model(name, width=0.25), create_model(name, width=0.5)
    # Dense convs scale with width squared; depthwise convs, BN and the head only linearly.
    assert 3.0 < n_params(half) / n_params(quarter) <= 4.0
    stem = create_model(name, width=0.25).features(torch.randn(1, 3, 16, 16), "stem")
    assert stem.shape[1] == LAYOUT[name]["stem"][0] // 4


def test_tiny_width_keeps_one_channel() -> None:
    model = create_model("resnet18", width=0.001).eval()
    assert model.features(torch.randn(1, 3, 16, 16), "stem").shape[1] == 1
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_init() -> None:
    model = create_model("resnet18", width=WIDTH)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.stages["stage4"][0].body[0]
    assert isinstance(conv, nn.Conv2d)
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"width": 0.0}, "width must be .* > 0, got 0.0"),
        ({"width": -1.0}, "width must be .* > 0, got -1.0"),
        ({"width": float("nan")}, "width must be a finite number > 0, got nan"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, float], pattern: str) -> None:
    with pytest.raises(EigenguardError, match=pattern):
        create_model("vgg16", **kwargs)  # type: ignore[arg-type]


def test_constructors_validate_too() -> None:
    with pytest.raises(EigenguardError, match="width"):
        MODELS.get("mobilenetv2")(width=0)


def test_unknown_model_lists_allowed() -> None:
    allowed = "allowed: mobilenetv2, resnet18, resnet34, vgg16"
    with pytest.raises(EigenguardError, match=f"unknown model 'resnet50'; {allowed}"):
        create_model("resnet50")
    assert isinstance(create_model("ResNet18", width=WIDTH), Backbone)
