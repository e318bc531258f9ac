"""FastNet: fast-training BN-ReLU conv stacks with max-pool downsampling for 28x28 inputs. NOT from the book.

No chapter of *Dive into Deep Learning* has these networks; they follow the fast-training CIFAR-10 work
(David Page's ResNet-9 from DAWNBench, and hlb-cifar10): stages that each open with a 3x3 conv and a 2x2
max pool, then BatchNorm and ReLU (pooling straight after the conv runs BN and ReLU on a quarter of the
pixels), optionally followed by identity-shortcut residual blocks; then global max pooling and a linear
layer whose logits are scaled by 0.125 (Page's ``Mul``). ``fastnet_s`` (16-32-64) trains an epoch of
Fashion-MNIST in seconds on a CPU, ``fastnet_m`` doubles its widths, ``fastnet_l`` has the widths and
full-resolution prep layer of Page's ResNet-9. Their native resolution is 28, registered as
``book_resolution=28`` (the side they are designed for, not one the book uses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .geometry import smallest_input
from .registry import positive_number, register_model

# One row per stage: (output channels, residual blocks, max pool?). A stage is a 3x3 conv to the row's
# width, a 2x2 max pool halving the side (if pooled), BN, ReLU, then the residual blocks at that width.
Stages = Sequence[tuple[int, int, bool]]

STAGE_TABLES: dict[str, Stages] = {
    "fastnet_s": ((16, 0, True), (32, 1, True), (64, 1, True)),  # 28 -> 14 -> 7 -> 3
    "fastnet_m": ((32, 0, True), (64, 1, True), (128, 1, True)),
    "fastnet_l": ((64, 0, False), (128, 1, True), (256, 0, True), (512, 1, True)),  # Page's ResNet-9
}


def conv_bn(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv (no bias: BN follows), then (if ``pool``) a 2x2 max pool halving the side, BatchNorm,
    ReLU. Pooling straight after the conv (as hlb-cifar10 does) runs BN and ReLU on a quarter of the
    pixels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        *([nn.MaxPool2d(kernel_size=2, stride=2)] if pool else []),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """Two ``conv_bn`` layers added to their input (identity shortcut; ReLU before the sum, as Page's)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return x + self.body(x)


def fastnet_stage(in_channels: int, out_channels: int, num_residuals: int, pool: bool) -> nn.Sequential:
    """One table row: ``conv_bn`` to ``out_channels`` (pooled if ``pool``), then ``num_residuals``
    residual blocks at the pooled side."""
    return nn.Sequential(
        conv_bn(in_channels, out_channels, pool),
        *(Residual(out_channels) for _ in range(num_residuals)),
    )


class Scale(nn.Module):
    """Multiplies by a constant (Page's ``Mul``: small logits at the start of training)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class FastNet(nn.Sequential):
    """One ``fastnet_stage`` per table row, global max pool, linear, scale."""

    def __init__(
        self,
        stages: Stages,
        in_channels: int = 1,
        num_classes: int = 10,
        head_scale: float = 0.125,
    ) -> None:
        blocks, channels = [], in_channels
        for out_channels, num_residuals, pool in stages:
            blocks.append(fastnet_stage(channels, out_channels, num_residuals, pool))
            channels = out_channels
        super().__init__(
            *blocks,
            nn.AdaptiveMaxPool2d((1, 1)),  # (B, C, 1, 1): 3x3 -> 1x1 at 28 with three pools
            nn.Flatten(),
            nn.Linear(channels, num_classes),
            Scale(head_scale),
        )


# The logits' multiplier: positive (0 or a negative number would erase or flip every prediction).
HEAD_SCALE = positive_number(0.125)


def _register(name: str, doc: str) -> None:
    stages = STAGE_TABLES[name]

    def factory(in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                head_scale: float = 0.125) -> FastNet:
        # image_size is the registry's contract; global max pooling makes FastNet take any side >= 8.
        return FastNet(stages, in_channels, num_classes, head_scale)

    factory.__doc__ = doc
    # Only the 2x2/2 max pools shrink the side; the 3x3 convs pad by 1.
    min_side = smallest_input([(2, 2, 0)] * sum(pool for _, _, pool in stages))
    register_model(
        name,
        family="fastnet",
        book_resolution=28,
        min_resolution=min_side,
        description=f"{doc} Not from the book; native 28x28.",
        kwargs={"head_scale": HEAD_SCALE},
    )(factory)


_register("fastnet_s", "FastNet small: BN-ReLU-maxpool stack, widths 16-32-64, two residual blocks.")
_register("fastnet_m", "FastNet medium: fastnet_s with doubled widths, 32-64-128.")
_register("fastnet_l", "FastNet large: Page's ResNet-9 (prep layer, widths 64-128-256-512).")
