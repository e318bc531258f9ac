"""DenseNet (D2L 7.7): dense blocks of BN-ReLU-conv layers joined by channel-halving transitions.

The head is the one the book's PyTorch chapter writes: BN, ReLU, adaptive *max* pooling, linear.

Knobs (D2L 7.7's exercises): the growth rate, the convs per dense block, the transitions' compression
(the share of channels they keep, the book's 0.5) and pooling (the book's average; max asks its exercise 1),
and DenseNet-B's bottleneck (a 1x1 conv to 4 x growth rate before each 3x3, Huang et al. 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .geometry import smallest_input
from .layers import POOLING, POOLS, refuse
from .registry import ModelKwarg, boolean, positive_int, positive_ints, register_model
from .resnet import resnet_stem


def conv_block(in_channels: int, out_channels: int, bottleneck: bool = False) -> nn.Sequential:
    """BN, ReLU, 3x3 conv (pre-activation order); with ``bottleneck`` first BN, ReLU, 1x1 conv to
    4 x ``out_channels`` (DenseNet-B)."""
    layers: list[nn.Module] = []
    if bottleneck:
        layers += [nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, 4 * out_channels, kernel_size=1)]
        in_channels = 4 * out_channels
    return nn.Sequential(*layers, nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))


class DenseBlock(nn.Module):
    """``num_convs`` conv blocks, each fed the concatenation of the input and all earlier outputs."""

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int, bottleneck: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *(conv_block(in_channels + i * growth_rate, growth_rate, bottleneck) for i in range(num_convs))
        )
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C + n*growth, H, W)
        for blk in self.net:
            x = torch.cat((x, blk(x)), dim=1)
        return x


def transition_block(in_channels: int, out_channels: int, pooling: str = "avg") -> nn.Sequential:
    """BN, ReLU, 1x1 conv to ``out_channels``, 2x2 average (or max) pool halving the side."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
        POOLS[pooling](kernel_size=2, stride=2),
    )


class DenseNet(nn.Sequential):
    """ResNet's stem, dense blocks with transitions between them, and the book's max-pooling head."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 96,
        num_convs_in_dense_blocks: Sequence[int] = (4, 4, 4, 4),
        growth_rate: int = 32,
        stem_channels: int = 64,
        compression: float = 0.5,
        transition_pool: str = "avg",
        bottleneck: bool = False,
    ) -> None:
        layers: list[nn.Module] = [resnet_stem(in_channels, stem_channels)]
        channels = stem_channels
        for i, num_convs in enumerate(num_convs_in_dense_blocks):
            block = DenseBlock(num_convs, channels, growth_rate, bottleneck)
            layers.append(block)
            channels = block.out_channels
            if i != len(num_convs_in_dense_blocks) - 1:
                kept = int(channels * compression)  # the book's channels // 2 at 0.5
                if kept < 1:
                    refuse(f"model.compression={compression} keeps no channel of the {channels} after dense block "
                           f"{i + 1}; use a larger compression")
                layers.append(transition_block(channels, kept, transition_pool))
                channels = kept
        super().__init__(
            *layers,
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d((1, 1)),  # (B, 248, 1, 1) with the book's settings
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )


# Stem (conv 7/2 pad 3, max pool 3/2 pad 1), then three 2x2 average-pool transitions.
_STEPS = [(7, 2, 3), (3, 2, 1), (2, 2, 0), (2, 2, 0), (2, 2, 0)]


# A transition keeps this share of its input channels: above 0 and at most 1 (DenseNet-C uses 0.5).
COMPRESSION = ModelKwarg("a number in (0, 1]", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                         and 0 < v <= 1, 0.25)


@register_model(family="densenet", book_resolution=96, min_resolution=smallest_input(_STEPS), kwargs={
    "num_convs_in_dense_blocks": positive_ints((2, 2, 2, 2)), "growth_rate": positive_int(example=16),
    "stem_channels": positive_int(example=32), "compression": COMPRESSION, "transition_pool": POOLING,
    "bottleneck": boolean(True)})
def densenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 96, **kwargs) -> DenseNet:
    """DenseNet as in D2L 7.7: blocks of 4 convs, growth rate 32, transitions halving channels."""
    return DenseNet(in_channels, num_classes, image_size, **kwargs)
