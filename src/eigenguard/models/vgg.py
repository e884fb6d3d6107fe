"""CIFAR-style VGG-16 with BatchNorm and a single linear classifier."""

from typing import ClassVar

from torch import nn

from eigenguard.models.backbone import Backbone, check_model_args, classifier_head, conv_bn, scaled

# Output channels of the 13 conv layers, one list per block; a 2x2 max-pool follows each block.
_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [*conv_bn(in_channels, out_channels, 3), nn.ReLU(inplace=True)]


def _max_pool() -> nn.MaxPool2d:
    # ceil_mode keeps odd sizes from vanishing (28 -> 14 -> 7 -> 4 -> 2 -> 1); same as floor on even sizes.
    return nn.MaxPool2d(2, ceil_mode=True)


class VGG16(Backbone):
    """VGG-16-BN: five blocks of 3x3 conv-BN-ReLU layers, a 2x2 max-pool after each, then
    adaptive average pooling to 1x1 and one linear layer, so any input of 16x16 or more works.

    Max-pools use ceil_mode, so an H x W input is ceil(H / s) x ceil(W / s) at a point of stride s.
    Each stage after the first starts with the previous block's max-pool.
    """

    POINT_MEANINGS: ClassVar[dict[str, str]] = {
        "stem": "after the first conv-BN-ReLU (64 channels, stride 1)",
        "stage1": "output of block 1, before its max-pool (64 channels, stride 1)",
        "stage2": "output of block 2, before its max-pool (128 channels, stride 2)",
        "stage3": "output of block 3, before its max-pool (256 channels, stride 4)",
        "stage4": "output of block 4, before its max-pool (512 channels, stride 8)",
        "stage5": "output of block 5, before its max-pool (512 channels, stride 16)",
    }

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> None:
        check_model_args(in_channels, num_classes, width)
        widths = [[scaled(c, width) for c in block] for block in _BLOCKS]
        stages: dict[str, nn.Module] = {"stem": nn.Sequential(*_conv_bn_relu(in_channels, widths[0][0]))}
        channels = widths[0][0]
        for i, block in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [_max_pool()]
            for out in block[1:] if i == 0 else block:
                layers += _conv_bn_relu(channels, out)
                channels = out
            stages[f"stage{i + 1}"] = nn.Sequential(*layers)
        head = classifier_head(channels, num_classes)
        super().__init__(stages, nn.Sequential(_max_pool(), *head))
