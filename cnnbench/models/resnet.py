"""ResNet (D2L 7.6): the book's Residual block and a stage table of (channels, blocks) rows.

Knobs (D2L 7.6's exercises): the block (``basic``: two 3x3 convs, the book's; ``bottleneck``: 1x1 down to a
quarter of the width, 3x3, 1x1 back up, as in the paper's deeper ResNets), the order inside it (``post``:
conv-BN-ReLU with the ReLU after the addition, the book's; ``pre``: BN-ReLU-conv with nothing after the
addition, He et al. 2016 "Identity mappings"), the stage table, and the shortcut where the shape changes
(``conv``: a 1x1 conv, the book's; ``conv_bn``: a 1x1 conv and BatchNorm, torchvision's; ``zero_pad``: the
paper's option A, a strided identity with zero channels added, no parameters).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .layers import refuse
from .registry import ModelKwarg, int_table, one_of, register_model

# (output channels, number of Residual blocks) per stage; stages after the first halve the side.
STAGE_TABLES: dict[str, Sequence[tuple[int, int]]] = {
    "resnet18": ((64, 2), (128, 2), (256, 2), (512, 2)),
    "resnet34": ((64, 3), (128, 4), (256, 6), (512, 3)),
}
BLOCKS = ("basic", "bottleneck")  # model.block
ORDERS = ("post", "pre")  # model.order
SHORTCUTS = ("conv", "conv_bn", "zero_pad")  # model.shortcut
EXPANSION = 4  # a bottleneck's inner width is its output width / 4 (ResNet-50: 64 inside, 256 out)


class ZeroPadShortcut(nn.Module):
    """The paper's option A: keep every ``stride``-th pixel and append zero channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The shortcut of a block whose shape changes (a 1x1 conv, 1x1 conv + BN, or zero padding)."""
    if kind == "zero_pad":
        return ZeroPadShortcut(in_channels, out_channels, stride)
    layer = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)
    return nn.Sequential(layer, nn.BatchNorm2d(out_channels)) if kind == "conv_bn" else layer


class Residual(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1 conv) shortcut, as in the book; ``order="pre"``
    moves each BN and ReLU before its conv and leaves the sum without a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, use_1x1conv: bool = False, strides: int = 1,
                 order: str = "post", shortcut: str = "conv"):
        super().__init__()
        self.pre = order == "pre"
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=strides)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # The book's shortcut conv has no BatchNorm after it.
        self.conv3 = make_shortcut(shortcut, in_channels, out_channels, strides) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(in_channels if self.pre else out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        skip = x if self.conv3 is None else self.conv3(x)
        if self.pre:
            y = self.conv1(F.relu(self.bn1(x)))
            return self.conv2(F.relu(self.bn2(y))) + skip
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + skip)


class Bottleneck(nn.Module):
    """1x1 conv to ``out_channels / 4``, 3x3 conv (strided), 1x1 conv to ``out_channels``, each with BN,
    ReLUs as ``order`` says; the shortcut is an identity unless the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, use_1x1conv: bool = False, strides: int = 1,
                 order: str = "post", shortcut: str = "conv"):
        super().__init__()
        mid = max(out_channels // EXPANSION, 1)
        self.pre = order == "pre"
        self.conv1 = nn.Conv2d(in_channels, mid, kernel_size=1)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, padding=1, stride=strides)
        self.conv3 = nn.Conv2d(mid, out_channels, kernel_size=1)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, strides) if use_1x1conv else None
        widths = (in_channels, mid, mid) if self.pre else (mid, mid, out_channels)
        self.bn1, self.bn2, self.bn3 = (nn.BatchNorm2d(c) for c in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        skip = x if self.shortcut is None else self.shortcut(x)
        convs, norms = (self.conv1, self.conv2, self.conv3), (self.bn1, self.bn2, self.bn3)
        if self.pre:
            for conv, bn in zip(convs, norms, strict=True):
                x = conv(F.relu(bn(x)))
            return x + skip
        for i, (conv, bn) in enumerate(zip(convs, norms, strict=True)):
            x = bn(conv(x))
            if i < 2:
                x = F.relu(x)
        return F.relu(x + skip)


def resnet_stage(in_channels: int, out_channels: int, num_residuals: int, first: bool, block: str = "basic",
                 order: str = "post", shortcut: str = "conv") -> nn.Sequential:
    """A stage; all but the first open with a strided block that has a 1x1-conv shortcut (the first too,
    when its input width differs, as a bottleneck stage's does)."""
    cls = Bottleneck if block == "bottleneck" else Residual
    blocks = []
    for i in range(num_residuals):
        if i == 0 and (not first or in_channels != out_channels):
            blocks.append(cls(in_channels, out_channels, use_1x1conv=True, strides=1 if first else 2,
                              order=order, shortcut=shortcut))
        else:
            blocks.append(cls(out_channels, out_channels, order=order, shortcut=shortcut))
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
    """b1 stem, one ``resnet_stage`` per table row (b2-b5), global average pooling, linear. The stem has
    the first row's width (a quarter of it with bottlenecks: ResNet-50's 64 before 256)."""

    def __init__(
        self,
        stages: Sequence[tuple[int, int]],
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 96,
        stem: str = "book",
        block: str = "basic",
        order: str = "post",
        shortcut: str = "conv",
    ) -> None:
        widths = [stages[0][0] // EXPANSION if block == "bottleneck" else stages[0][0]] + [c for c, _ in stages]
        if shortcut == "zero_pad" and any(b < a for a, b in itertools.pairwise(widths)):
            refuse(f"model.shortcut=zero_pad pads channels with zeros, so no stage of model.stages "
                   f"{[list(r) for r in stages]} may be narrower than the one before it")
        stem_channels = stages[0][0] // EXPANSION if block == "bottleneck" else stages[0][0]
        blocks, channels = [], max(stem_channels, 1)
        for i, (out_channels, num_residuals) in enumerate(stages):
            blocks.append(resnet_stage(channels, out_channels, num_residuals, first=i == 0, block=block,
                                       order=order, shortcut=shortcut))
            channels = out_channels
        # Pre-activation blocks end on a sum with no BN or ReLU after it: the network adds them once.
        tail = [nn.BatchNorm2d(channels), nn.ReLU()] if order == "pre" else []
        super().__init__(
            resnet_stem(in_channels, max(stem_channels, 1), stem),
            *blocks,
            *tail,
            nn.AdaptiveAvgPool2d((1, 1)),  # (B, 512, 1, 1)
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )


RESNET_KWARGS = {
    # Every layer pads enough that even a 1x1 input keeps one pixel, so any size builds.
    "stem": ModelKwarg("book (7x7/2 conv and max pool) or cifar (3x3/1 conv, D2L 13.6)", lambda v: v in STEMS,
                       "cifar"),
    "block": one_of(BLOCKS, "bottleneck"),
    "order": one_of(ORDERS, "pre"),
    "shortcut": one_of(SHORTCUTS, "zero_pad"),
    "stages": int_table(2, ((64, 1), (128, 1)), "output channels, number of blocks"),
}


def _register(name: str, doc: str) -> None:
    def factory(in_channels: int = 1, num_classes: int = 10, image_size: int = 96,
                stages: Sequence[Sequence[int]] | None = None, **kw) -> ResNet:
        table = STAGE_TABLES[name] if stages is None else [tuple(row) for row in stages]
        return ResNet(table, in_channels, num_classes, image_size, **kw)

    factory.__doc__ = doc
    register_model(name, family="resnet", book_resolution=96, min_resolution=1, kwargs=RESNET_KWARGS)(factory)


_register("resnet18", "ResNet-18 as in D2L 7.6 (four stages of two Residual blocks).")
_register("resnet34", "ResNet-34: the book's Residual blocks in stages of 3, 4, 6, 3.")
