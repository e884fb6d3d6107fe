"""CIFAR-style MobileNetV2: stride-1 stem and stride-1 second block row, so 32x32 ends at 4x4."""

from typing import ClassVar

from torch import Tensor, nn

from eigenguard.models.backbone import Backbone, check_model_args, classifier_head, conv_bn, scaled

# Inverted-residual rows (expansion t, out channels c, repeats n, first stride s); row 2 has s=1 for CIFAR.
_ROWS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [*conv_bn(in_channels, out_channels, kernel_size, stride, groups), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t=1), 3x3 depthwise, linear 1x1 project; identity skip when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = [] if expansion == 1 else _conv_bn_relu6(in_channels, hidden, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
        layers += conv_bn(hidden, out_channels, 1)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2(Backbone):
    """MobileNetV2 for small images. A stage is the run of blocks between down-samplings:

    - "stem": 3x3 conv-BN-ReLU6, 32 channels, stride 1
    - "stage1": rows (1,16,1,1) and (6,24,2,1); 24 channels, stride 1 (before the first down-sampling)
    - "stage2": row (6,32,3,2); 32 channels, stride 2
    - "stage3": rows (6,64,4,2) and (6,96,3,1); 96 channels, stride 4
    - "stage4": rows (6,160,3,2) and (6,320,1,1), then the 1x1 conv-BN-ReLU6 to 1280; 1280 channels, stride 8

    An H x W input is ceil(H / s) x ceil(W / s) at a point of stride s. Then average pool and linear.
    """

    POINT_MEANINGS: ClassVar[dict[str, str]] = {
        "stem": "after the 3x3 conv-BN-ReLU6 stem (32 channels, stride 1)",
        "stage1": "after the 16- and 24-channel blocks, before any down-sampling (24 channels, stride 1)",
        "stage2": "after the 32-channel blocks (32 channels, stride 2)",
        "stage3": "after the 64- and 96-channel blocks (96 channels, stride 4)",
        "stage4": "after the 160- and 320-channel blocks and the final 1x1 conv (1280 channels, stride 8)",
    }

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        check_model_args(in_channels, num_classes, width)
        channels = scaled(32, width)
        stages: dict[str, nn.Module] = {"stem": nn.Sequential(*_conv_bn_relu6(in_channels, channels, 3))}
        current: list[nn.Module] = []
        for expansion, base, repeats, first_stride in _ROWS:
            out = scaled(base, width)
            for j in range(repeats):
                stride = first_stride if j == 0 else 1
                if stride != 1:  # a down-sampling block starts a new stage
                    stages[f"stage{len(stages)}"] = nn.Sequential(*current)
                    current = []
                current.append(InvertedResidual(channels, out, stride, expansion))
                channels = out
        last = scaled(1280, width)
        current += _conv_bn_relu6(channels, last, 1)
        stages[f"stage{len(stages)}"] = nn.Sequential(*current)
        super().__init__(stages, classifier_head(last, num_classes))
