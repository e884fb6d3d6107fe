"""CIFAR-style ResNet-18 / ResNet-34: 3x3 stride-1 stem, no max-pool, four BasicBlock stages."""

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from eigenguard.models.backbone import Backbone, check_model_args, classifier_head, conv_bn, scaled


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (1x1 conv-BN when the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(in_channels, out_channels, 3, stride),
            nn.ReLU(inplace=True),
            *conv_bn(out_channels, out_channels, 3),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(*conv_bn(in_channels, out_channels, 1, stride))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(Backbone):
    """CIFAR-style ResNet built from BasicBlocks; `blocks` gives the number of blocks per stage.

    Output size of an H x W input at each point is ceil(H / s) x ceil(W / s), s the stride below.
    """

    POINT_MEANINGS: ClassVar[dict[str, str]] = {
        "stem": "after the 3x3 conv-BN-ReLU stem (64 channels, stride 1)",
        "stage1": "after the first residual stage, before the first down-sampling (64 channels, stride 1)",
        "stage2": "after the second residual stage (128 channels, stride 2)",
        "stage3": "after the third residual stage (256 channels, stride 4)",
        "stage4": "after the fourth residual stage (512 channels, stride 8)",
    }

    def __init__(self, blocks: Sequence[int], in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        check_model_args(in_channels, num_classes, width)
        channels = scaled(64, width)
        stages: dict[str, nn.Module] = {
            "stem": nn.Sequential(*conv_bn(in_channels, channels, 3), nn.ReLU(inplace=True))
        }
        for i, (n, base, stride) in enumerate(zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2), strict=True)):
            out = scaled(base, width)
            layers = []
            for j in range(n):
                layers.append(BasicBlock(channels, out, stride if j == 0 else 1))
                channels = out
            stages[f"stage{i + 1}"] = nn.Sequential(*layers)
        super().__init__(stages, classifier_head(channels, num_classes))


def resnet18(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-18: 2 BasicBlocks per stage."""
    return ResNet((2, 2, 2, 2), in_channels, num_classes, width)


def resnet34(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> ResNet:
    """ResNet-34: 3, 4, 6, 3 BasicBlocks per stage."""
    return ResNet((3, 4, 6, 3), in_channels, num_classes, width)
