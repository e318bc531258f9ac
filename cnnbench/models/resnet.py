"""ResNet (D2L 7.6): the book's Residual block and a stage table of (channels, blocks) rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .registry import ModelKwarg, register_model

# (output channels, number of Residual blocks) per stage; stages after the first halve the side.
STAGE_TABLES: dict[str, Sequence[tuple[int, int]]] = {
    "resnet18": ((64, 2), (128, 2), (256, 2), (512, 2)),
    "resnet34": ((64, 3), (128, 4), (256, 6), (512, 3)),
}


class Residual(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1 conv) shortcut, as in the book."""

    def __init__(self, in_channels: int, out_channels: int, use_1x1conv: bool = False, strides: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # The book's shortcut conv has no BatchNorm after it.
        self.conv3 = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=strides) if use_1x1conv else None
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


def resnet_stage(in_channels: int, out_channels: int, num_residuals: int, first: bool) -> nn.Sequential:
    """A stage; all but the first open with a strided Residual that has a 1x1-conv shortcut."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first:
            blocks.append(Residual(in_channels, out_channels, use_1x1conv=True, strides=2))
        else:
            blocks.append(Residual(out_channels, out_channels))
    return nn.Sequential(*blocks)


STEMS = ("book", "cifar")  # model.stem


def resnet_stem(in_channels: int, channels: int = 64, stem: str = "book") -> nn.Sequential:
    """b1: 7x7/2 conv, BN, ReLU, 3x3/2 max pool (the side shrinks by 4); ``stem="cifar"``: the book's
    CIFAR-10 ResNet-18 (D2L 13.6 ``resnet18``, used in 14.13): one 3x3/1 conv, BN, ReLU, no pooling,
    so a 32-pixel image keeps its side into the first stage."""
    if stem == "cifar":
        return nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1),
                             nn.BatchNorm2d(channels), nn.ReLU())
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


class ResNet(nn.Sequential):
    """b1 stem, one ``resnet_stage`` per table row (b2-b5), global average pooling, linear."""

    def __init__(
        self,
        stages: Sequence[tuple[int, int]],
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 96,
        stem: str = "book",
    ) -> None:
        blocks, channels = [], stages[0][0]
        for i, (out_channels, num_residuals) in enumerate(stages):
            blocks.append(resnet_stage(channels, out_channels, num_residuals, first=i == 0))
            channels = out_channels
        super().__init__(
            resnet_stem(in_channels, stages[0][0], stem),
            *blocks,
            nn.AdaptiveAvgPool2d((1, 1)),  # (B, 512, 1, 1)
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )


def _register(name: str, doc: str) -> None:
    def factory(in_channels: int = 1, num_classes: int = 10, image_size: int = 96, **kw) -> ResNet:
        return ResNet(STAGE_TABLES[name], in_channels, num_classes, image_size, **kw)

    factory.__doc__ = doc
    # Every layer pads enough that even a 1x1 input keeps one pixel, so any size builds.
    stem = ModelKwarg("book (7x7/2 conv and max pool) or cifar (3x3/1 conv, D2L 13.6)", lambda v: v in STEMS, "cifar")
    register_model(name, family="resnet", book_resolution=96, min_resolution=1, kwargs={"stem": stem})(factory)


_register("resnet18", "ResNet-18 as in D2L 7.6 (four stages of two Residual blocks).")
_register("resnet34", "ResNet-34: the book's Residual blocks in stages of 3, 4, 6, 3.")
