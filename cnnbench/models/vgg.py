"""VGG networks (D2L 7.2) built from a ``conv_arch`` table of (number of convs, output channels).

The book trains VGG-11 on Fashion-MNIST with every conv width divided by 4 (``ratio = 4``); that is the
registered ``vgg11``. ``vgg11_full`` keeps the original widths; ``vgg13/16/19`` use their own tables
with the same divisor as the book's ``vgg11``. The table itself is a knob (``model.conv_arch``), as are
the divisor, BatchNorm after each conv (before its ReLU, as torchvision's ``vgg*_bn``) and the dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .geometry import out_side, smallest_input
from .layers import refuse
from .registry import DROPOUT, boolean, int_table, positive_int, positive_ints_or_empty, register_model

ConvArch = Sequence[tuple[int, int]]  # ((num_convs, out_channels), ...), one entry per block

CONV_ARCHS: dict[str, ConvArch] = {
    "vgg11": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
    "vgg13": ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),
    "vgg16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),
    "vgg19": ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),
}
BOOK_HIDDEN = (4096, 4096)

# Every block ends in a 2x2/2 max pool; the 3x3 convs keep the size (padding 1).
_POOL = (2, 2, 0)
_MIN_SIDE = smallest_input([_POOL] * 5)


def vgg_block(num_convs: int, in_channels: int, out_channels: int, batch_norm: bool = False) -> nn.Sequential:
    """``num_convs`` 3x3 conv (+ BatchNorm) + ReLU layers, then a 2x2 max pool halving the side."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU())
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(nn.Sequential):
    """VGG: one ``vgg_block`` per ``conv_arch`` row, then the 4096-4096-classes classifier."""

    def __init__(
        self,
        conv_arch: ConvArch,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 224,
        width_div: int = 1,
        dropout: float = 0.5,
        batch_norm: bool = False,
        hidden: Sequence[int] = BOOK_HIDDEN,
    ) -> None:
        for _, out_channels in conv_arch:
            if out_channels % width_div:
                refuse(f"model.width_div={width_div} does not divide the width {out_channels} of model.conv_arch "
                       f"{[list(r) for r in conv_arch]}")
        side = out_side(image_size, [_POOL] * len(conv_arch))  # 7 at 224
        if side < 1:
            refuse(f"model.conv_arch has {len(conv_arch)} blocks, each halving the side: {image_size}x{image_size} "
                   f"inputs vanish (they need at least {2 ** len(conv_arch)} pixels); use fewer blocks or "
                   "a larger dataset.resize")
        blocks = []
        channels = in_channels
        for num_convs, out_channels in conv_arch:
            out_channels //= width_div
            blocks.append(vgg_block(num_convs, channels, out_channels, batch_norm))
            channels = out_channels
        features = channels * side * side  # the flatten: (B, channels * side * side)
        head: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            head += [nn.Linear(features, h), nn.ReLU(), nn.Dropout(dropout)]
            features = h
        super().__init__(*blocks, *head, nn.Linear(features, num_classes))


# Every conv width of the named tables (64 to 512) is a multiple of 64, so a divisor of 64 keeps them all whole.
VGG_KWARGS = {
    "conv_arch": int_table(2, ((1, 64), (1, 128), (2, 256)), "number of 3x3 convs, output channels"),
    "width_div": positive_int(divides=64, example=8),
    "dropout": DROPOUT,
    "batch_norm": boolean(True),
    "hidden": positive_ints_or_empty((1024, 1024)),
}


def _register(name: str, arch: str, default_div: int, doc: str) -> None:
    def factory(in_channels: int = 1, num_classes: int = 10, image_size: int = 224, width_div: int = default_div,
                conv_arch: ConvArch | None = None, **kw) -> VGG:
        table = CONV_ARCHS[arch] if conv_arch is None else [tuple(row) for row in conv_arch]
        return VGG(table, in_channels, num_classes, image_size, width_div=width_div, **kw)

    factory.__doc__ = doc
    def min_side(conv_arch: ConvArch | None = None) -> int:  # every block halves the side
        return smallest_input([_POOL] * len(CONV_ARCHS[arch] if conv_arch is None else conv_arch))

    register_model(name, family="vgg", book_resolution=224, min_resolution=_MIN_SIDE, kwargs=VGG_KWARGS,
                   min_side=min_side, geometry=("conv_arch",))(factory)


_register("vgg11", "vgg11", 4, "VGG-11 with conv widths / 4, as D2L 7.2 trains it.")
_register("vgg11_full", "vgg11", 1, "VGG-11 with the original conv widths (64 to 512).")
_register("vgg13", "vgg13", 4, "VGG-13 with conv widths / 4.")
_register("vgg16", "vgg16", 4, "VGG-16 with conv widths / 4.")
_register("vgg19", "vgg19", 4, "VGG-19 with conv widths / 4.")
