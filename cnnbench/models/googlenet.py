"""GoogLeNet (D2L 7.4): Inception blocks of four parallel paths, stages b1-b5, 1024 features.

Knobs (D2L 7.4's exercises and the Inception versions it names): ``batch_norm`` puts BatchNorm after every
conv, before its ReLU (Inception-BN, "v2", Ioffe & Szegedy 2015); ``factorize`` replaces each 5x5 conv by
two 3x3 convs of the same output width (the factorization of Inception v3, Szegedy et al. 2016, which
Inception-BN already used).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .geometry import smallest_input
from .registry import boolean, register_model

# Inception rows: (c1, (c2_reduce, c2), (c3_reduce, c3), c4); input channels follow from the previous row.
InceptionArch = tuple[int, tuple[int, int], tuple[int, int], int]

# Stages b3, b4, b5 as in the book; a max pool (3, 2, 1) follows b3 and b4, global average pooling b5.
STAGES: Sequence[Sequence[InceptionArch]] = (
    ((64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64)),
    (
        (192, (96, 208), (16, 48), 64),
        (160, (112, 224), (24, 64), 64),
        (128, (128, 256), (24, 64), 64),
        (112, (144, 288), (32, 64), 64),
        (256, (160, 320), (32, 128), 128),
    ),
    ((256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128)),
)

# Spatial steps: b1 conv7/2 + pool3/2, b2 pool3/2, b3 pool3/2, b4 pool3/2 (all pools padded by 1).
_STEPS = [(7, 2, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1), (3, 2, 1)]


def conv(in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool, **kw) -> nn.Module:
    """A conv, followed by BatchNorm when ``batch_norm`` (the ReLU comes after both)."""
    layer = nn.Conv2d(in_channels, out_channels, kernel_size, **kw)
    return nn.Sequential(layer, nn.BatchNorm2d(out_channels)) if batch_norm else layer


def five_by_five(in_channels: int, out_channels: int, batch_norm: bool, factorize: bool) -> nn.Module:
    """Path 3's 5x5 conv, or two 3x3 convs with a ReLU between them: the same 5x5 receptive field, the first
    keeping the 1x1 reduction's width (9 x in^2 + 9 x in x out weights instead of 25 x in x out)."""
    if not factorize:
        return conv(in_channels, out_channels, 5, batch_norm, padding=2)
    return nn.Sequential(conv(in_channels, in_channels, 3, batch_norm, padding=1), nn.ReLU(),
                         conv(in_channels, out_channels, 3, batch_norm, padding=1))


class Inception(nn.Module):
    """Four paths concatenated on channels: 1x1; 1x1->3x3; 1x1->5x5 (or 3x3->3x3); 3x3 max pool->1x1."""

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int,
                 batch_norm: bool = False, factorize: bool = False):
        super().__init__()
        self.p1_1 = conv(in_channels, c1, 1, batch_norm)
        self.p2_1 = conv(in_channels, c2[0], 1, batch_norm)
        self.p2_2 = conv(c2[0], c2[1], 3, batch_norm, padding=1)
        self.p3_1 = conv(in_channels, c3[0], 1, batch_norm)
        self.p3_2 = five_by_five(c3[0], c3[1], batch_norm, factorize)
        self.p4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.p4_2 = conv(in_channels, c4, 1, batch_norm)
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, out_channels, H, W)
        relu = torch.relu
        p1 = relu(self.p1_1(x))
        p2 = relu(self.p2_2(relu(self.p2_1(x))))
        p3 = relu(self.p3_2(relu(self.p3_1(x))))
        p4 = relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def _stage(rows: Sequence[InceptionArch], in_channels: int, last: bool, batch_norm: bool = False,
           factorize: bool = False) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for row in rows:
        block = Inception(in_channels, *row, batch_norm=batch_norm, factorize=factorize)
        layers.append(block)
        in_channels = block.out_channels
    if last:
        layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()]
    else:
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    return nn.Sequential(*layers), in_channels


class GoogLeNet(nn.Sequential):
    """b1 (7x7 conv stem), b2 (1x1 + 3x3 convs), b3-b5 (Inception stages), then a linear classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 96,
        stages: Sequence[Sequence[InceptionArch]] = STAGES,
        batch_norm: bool = False,
        factorize: bool = False,
    ) -> None:
        def bn(channels: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(channels)] if batch_norm else []

        b1 = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
            *bn(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        b2 = nn.Sequential(
            nn.Conv2d(64, 64, kernel_size=1),
            *bn(64),
            nn.ReLU(),
            nn.Conv2d(64, 192, kernel_size=3, padding=1),
            *bn(192),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        blocks, channels = [], 192
        for i, rows in enumerate(stages):
            block, channels = _stage(rows, channels, last=i == len(stages) - 1, batch_norm=batch_norm,
                                     factorize=factorize)
            blocks.append(block)
        super().__init__(b1, b2, *blocks, nn.Linear(channels, num_classes))  # channels = 1024


@register_model(family="googlenet", book_resolution=96, min_resolution=smallest_input(_STEPS),
                kwargs={"batch_norm": boolean(True), "factorize": boolean(True)})
def googlenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 96, **kwargs) -> GoogLeNet:
    """GoogLeNet as in D2L 7.4."""
    return GoogLeNet(in_channels, num_classes, image_size, **kwargs)
