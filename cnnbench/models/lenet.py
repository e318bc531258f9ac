"""LeNet-5 (D2L 6.6) and the batch-normalized LeNet of D2L 8.5.

Both are one ``LeNet`` class: two 5x5 conv + sigmoid + 2x2 average-pool stages, then a 120-84-classes
MLP with sigmoids. The batch-norm variant puts BatchNorm after every conv and hidden linear layer, before
the sigmoid, and (as in the book) drops the first conv's padding, so 28x28 inputs flatten to 16*4*4.
"""

from __future__ import annotations

from torch import nn

from .geometry import out_side, smallest_input
from .registry import register_model


def _stages(first_padding: int) -> list[tuple[int, int, int]]:
    # conv5(p) -> avgpool2/2 -> conv5 -> avgpool2/2, as (kernel, stride, padding)
    return [(5, 1, first_padding), (2, 2, 0), (5, 1, 0), (2, 2, 0)]


def _norm(batch_norm: bool, channels: int, dims: int) -> list[nn.Module]:
    if not batch_norm:
        return []
    return [nn.BatchNorm2d(channels) if dims == 4 else nn.BatchNorm1d(channels)]


class LeNet(nn.Sequential):
    """LeNet-5 with sigmoid activations and average pooling; optional BatchNorm before each sigmoid."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        first_padding: int = 2,
        batch_norm: bool = False,
    ) -> None:
        side = out_side(image_size, _stages(first_padding))  # 5 at 28 with padding 2, 4 without
        super().__init__(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=first_padding),
            *_norm(batch_norm, 6, 4),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5),
            *_norm(batch_norm, 16, 4),
            nn.Sigmoid(),
            nn.AvgPool2d(kernel_size=2, stride=2),
            nn.Flatten(),  # (B, 16 * side * side)
            nn.Linear(16 * side * side, 120),
            *_norm(batch_norm, 120, 2),
            nn.Sigmoid(),
            nn.Linear(120, 84),
            *_norm(batch_norm, 84, 2),
            nn.Sigmoid(),
            nn.Linear(84, num_classes),
        )


@register_model(family="lenet", book_resolution=28, min_resolution=smallest_input(_stages(2)))
def lenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, **kwargs) -> LeNet:
    """LeNet-5 as in D2L 6.6 (sigmoid, average pooling, first conv padded by 2)."""
    return LeNet(in_channels, num_classes, image_size, first_padding=2, batch_norm=False, **kwargs)


@register_model(family="lenet", book_resolution=28, min_resolution=smallest_input(_stages(0)))
def lenet_bn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, **kwargs) -> LeNet:
    """LeNet with batch normalization as in D2L 8.5 (no padding on the first conv)."""
    return LeNet(in_channels, num_classes, image_size, first_padding=0, batch_norm=True, **kwargs)
