"""Network in Network (D2L 7.3): NiN blocks and a global-average-pooling head, no linear layer.

Knobs (D2L 7.3's exercises): the number of 1x1 convs in each block (the book's two; "remove one of them,
or add a third"), and the dropout before the last block.
"""

from __future__ import annotations

from torch import nn

from .geometry import smallest_input
from .registry import DROPOUT, non_negative_int, register_model

# (kernel, stride, padding) of every layer that changes the spatial size, in order.
_STEPS = [(11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 2, 0), (3, 1, 1)]


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, num_1x1: int = 2):
    """One conv of the given shape followed by ``num_1x1`` 1x1 convs (a per-pixel MLP), each with ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU()]
    for _ in range(num_1x1):
        layers += [nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU()]
    return nn.Sequential(*layers)


class NiN(nn.Sequential):
    """NiN: the last block emits one channel per class, averaged over space into the logits."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, image_size: int = 224, dropout: float = 0.5,
        num_1x1: int = 2,
    ) -> None:
        super().__init__(
            nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0, num_1x1=num_1x1),
            nn.MaxPool2d(3, stride=2),
            nin_block(96, 256, kernel_size=5, stride=1, padding=2, num_1x1=num_1x1),
            nn.MaxPool2d(3, stride=2),
            nin_block(256, 384, kernel_size=3, stride=1, padding=1, num_1x1=num_1x1),
            nn.MaxPool2d(3, stride=2),
            nn.Dropout(dropout),
            nin_block(384, num_classes, kernel_size=3, stride=1, padding=1, num_1x1=num_1x1),
            nn.AdaptiveAvgPool2d((1, 1)),  # (B, classes, 1, 1)
            nn.Flatten(),  # (B, classes)
        )


@register_model(family="nin", book_resolution=224, min_resolution=smallest_input(_STEPS),
                kwargs={"dropout": DROPOUT, "num_1x1": non_negative_int(example=1)})
def nin(in_channels: int = 1, num_classes: int = 10, image_size: int = 224, **kwargs) -> NiN:
    """Network in Network as in D2L 7.3."""
    return NiN(in_channels, num_classes, image_size, **kwargs)
