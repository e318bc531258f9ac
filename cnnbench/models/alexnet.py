"""AlexNet as D2L 7.1 adapts it to Fashion-MNIST (1 input channel, 10 classes, dropout 0.5)."""

from __future__ import annotations

from torch import nn

from .geometry import out_side, smallest_input
from .registry import DROPOUT, register_model

# (kernel, stride, padding) of every layer that changes the spatial size, in order.
_STEPS = [(11, 4, 1), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 0)]


class AlexNet(nn.Sequential):
    """Five conv layers and three fully connected ones; the first FC width follows the input size."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 224,
        dropout: float = 0.5,
    ) -> None:
        side = out_side(image_size, _STEPS)  # 5 at 224, so the flatten is 256*5*5 = 6400
        super().__init__(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Flatten(),  # (B, 256 * side * side)
            nn.Linear(256 * side * side, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )


@register_model(family="alexnet", book_resolution=224, min_resolution=smallest_input(_STEPS),
                kwargs={"dropout": DROPOUT})
def alexnet(in_channels: int = 1, num_classes: int = 10, image_size: int = 224, **kwargs) -> AlexNet:
    """AlexNet for Fashion-MNIST as in D2L 7.1."""
    return AlexNet(in_channels, num_classes, image_size, **kwargs)
