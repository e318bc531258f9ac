"""LeNet-5 (D2L 6.6) and the batch-normalized LeNet of D2L 8.5.

Both are one ``LeNet`` class: conv + activation + 2x2 pool stages (the book's two 5x5 convs of 6 and 16
channels, sigmoid, average pooling), then an MLP (the book's 120-84-classes with sigmoids). The
batch-norm variant puts BatchNorm after every conv and hidden linear layer, before the sigmoid, and (as
in the book) drops the first conv's padding, so 28x28 inputs flatten to 16*4*4.

Every choice the book's exercises (6.6, 8.5) ask about is a keyword argument, the book's value its default:
the activation, the pooling, the conv channels and kernel sizes, the hidden sizes, dropout after each
hidden layer, and BatchNorm's place (before/after the activation) and the bias of the layer before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from .geometry import Step, out_side, smallest_input
from .layers import ACTIVATION, BN_POSITION, POOLING, POOLS, norm_act, refuse
from .registry import DROPOUT, boolean, non_negative_int, positive_ints, positive_ints_or_empty, register_model

BOOK_CHANNELS = (6, 16)
BOOK_KERNELS = (5, 5)
BOOK_HIDDEN = (120, 84)


def _stages(first_padding: int, kernel_sizes: Sequence[int] = BOOK_KERNELS, depth: int | None = None) -> list[Step]:
    # conv k (padding p on the first only) -> pool 2/2, per stage, as (kernel, stride, padding); one kernel
    # size stands for all ``depth`` convs
    if len(kernel_sizes) == 1 and depth:
        kernel_sizes = list(kernel_sizes) * depth
    steps: list[Step] = []
    for i, k in enumerate(kernel_sizes):
        steps += [(k, 1, first_padding if i == 0 else 0), (2, 2, 0)]
    return steps


class LeNet(nn.Sequential):
    """LeNet-5: conv stages of conv + (BatchNorm) + activation + 2x2 pool, then a hidden MLP."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        first_padding: int = 2,
        batch_norm: bool = False,
        *,
        channels: Sequence[int] = BOOK_CHANNELS,
        kernel_sizes: Sequence[int] = BOOK_KERNELS,
        hidden: Sequence[int] = BOOK_HIDDEN,
        activation: str = "sigmoid",
        pooling: str = "avg",
        dropout: float = 0.0,
        bn_position: str = "before",
        bias: bool = True,
    ) -> None:
        if len(kernel_sizes) == 1:  # one size for every conv: sweeping model.channels alone changes the depth
            kernel_sizes = list(kernel_sizes) * len(channels)
        if len(kernel_sizes) != len(channels):
            refuse(f"model.kernel_sizes has {len(kernel_sizes)} entries but model.channels has {len(channels)}: "
                   "give one kernel size per conv layer, or one for all")
        steps = _stages(first_padding, kernel_sizes)
        side = out_side(image_size, steps)  # 5 at 28 with the book's padding 2, 4 without
        if side < 1:
            refuse(f"model.channels/kernel_sizes: {len(channels)} conv stages with kernels {list(kernel_sizes)} "
                   f"shrink {image_size}x{image_size} inputs to nothing (the smallest side they take is "
                   f"{smallest_input(steps)}); use fewer stages or smaller kernels")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, (c, k) in enumerate(zip(channels, kernel_sizes, strict=True)):
            layers += [nn.Conv2d(c_in, c, kernel_size=k, padding=first_padding if i == 0 else 0, bias=bias),
                       *norm_act(c, 4, activation, batch_norm, bn_position),
                       POOLS[pooling](kernel_size=2, stride=2)]
            c_in = c
        layers.append(nn.Flatten())  # (B, channels[-1] * side * side)
        features = c_in * side * side
        for h in hidden:
            layers += [nn.Linear(features, h, bias=bias), *norm_act(h, 2, activation, batch_norm, bn_position)]
            if dropout > 0:  # the book's LeNet has none: no layer at 0, so its layers stay exact
                layers.append(nn.Dropout(dropout))
            features = h
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)


# The knobs of both LeNets (model.*); their defaults are the book's.
LENET_KWARGS = {
    "activation": ACTIVATION,
    "pooling": POOLING,
    "channels": positive_ints((16, 32)),
    "kernel_sizes": positive_ints((3, 3)),
    "first_padding": non_negative_int(example=1),
    "hidden": positive_ints_or_empty((256,)),
    "dropout": DROPOUT,
    "batch_norm": boolean(True),
    "bn_position": BN_POSITION,
    "bias": boolean(False),
}


def _min_side(first_padding: int) -> Callable[..., int]:
    """The smallest input side for the given conv knobs (``first_padding``: the factory's default)."""
    def min_side(first_padding: int = first_padding, kernel_sizes: Sequence[int] = BOOK_KERNELS,
                 channels: Sequence[int] = BOOK_CHANNELS) -> int:
        return smallest_input(_stages(first_padding, kernel_sizes, len(channels)))
    return min_side


GEOMETRY = ("channels", "kernel_sizes", "first_padding")


@register_model(family="lenet", book_resolution=28, min_resolution=smallest_input(_stages(2)), kwargs=LENET_KWARGS,
                min_side=_min_side(2), geometry=GEOMETRY)
def lenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, first_padding: int = 2,
          batch_norm: bool = False, **kwargs) -> LeNet:
    """LeNet-5 as in D2L 6.6 (sigmoid, average pooling, first conv padded by 2)."""
    return LeNet(in_channels, num_classes, image_size, first_padding=first_padding, batch_norm=batch_norm, **kwargs)


@register_model(family="lenet", book_resolution=28, min_resolution=smallest_input(_stages(0)), kwargs=LENET_KWARGS,
                min_side=_min_side(0), geometry=GEOMETRY)
def lenet_bn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, first_padding: int = 0,
             batch_norm: bool = True, **kwargs) -> LeNet:
    """LeNet with batch normalization as in D2L 8.5 (no padding on the first conv)."""
    return LeNet(in_channels, num_classes, image_size, first_padding=first_padding, batch_norm=batch_norm, **kwargs)
