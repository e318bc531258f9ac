"""VGG networks (D2L 7.2) built from a ``conv_arch`` table of (number of convs, output channels).

The book trains VGG-11 on Fashion-MNIST with every conv width divided by 4 (``ratio = 4``); that is the
registered ``vgg11``. ``vgg11_full`` keeps the original widths; ``vgg13/16/19`` use their own tables
with the same divisor as the book's ``vgg11``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .geometry import out_side, smallest_input
from .registry import DROPOUT, positive_int, register_model

ConvArch = Sequence[tuple[int, int]]  # ((num_convs, out_channels), ...), one entry per block

CONV_ARCHS: dict[str, ConvArch] = {
    "vgg11": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
    "vgg13": ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),
    "vgg16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),
    "vgg19": ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),
}

# Every block ends in a 2x2/2 max pool; the 3x3 convs keep the size (padding 1).
_POOL = (2, 2, 0)
_MIN_SIDE = smallest_input([_POOL] * 5)


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """``num_convs`` 3x3 conv + ReLU layers, then a 2x2 max pool halving the side."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
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
    ) -> None:
        blocks = []
        channels = in_channels
        for num_convs, out_channels in conv_arch:
            out_channels //= width_div
            blocks.append(vgg_block(num_convs, channels, out_channels))
            channels = out_channels
        side = out_side(image_size, [_POOL] * len(conv_arch))  # 7 at 224
        super().__init__(
            *blocks,
            nn.Flatten(),  # (B, channels * side * side)
            nn.Linear(channels * side * side, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )


# Every conv width (64 to 512) is a multiple of 64, so a divisor of 64 keeps them all whole.
VGG_KWARGS = {"width_div": positive_int(divides=64, example=4), "dropout": DROPOUT}


def _register(name: str, arch: str, default_div: int, doc: str) -> None:
    def factory(
        in_channels: int = 1, num_classes: int = 10, image_size: int = 224, width_div: int = default_div, **kw
    ) -> VGG:
        return VGG(CONV_ARCHS[arch], in_channels, num_classes, image_size, width_div=width_div, **kw)

    factory.__doc__ = doc
    register_model(name, family="vgg", book_resolution=224, min_resolution=_MIN_SIDE, kwargs=VGG_KWARGS)(factory)


_register("vgg11", "vgg11", 4, "VGG-11 with conv widths / 4, as D2L 7.2 trains it.")
_register("vgg11_full", "vgg11", 1, "VGG-11 with the original conv widths (64 to 512).")
_register("vgg13", "vgg13", 4, "VGG-13 with conv widths / 4.")
_register("vgg16", "vgg16", 4, "VGG-16 with conv widths / 4.")
_register("vgg19", "vgg19", 4, "VGG-19 with conv widths / 4.")
