"""AlexNet as D2L 7.1 adapts it to Fashion-MNIST (1 input channel, 10 classes, dropout 0.5).

Knobs (D2L 7.1's exercises: AlexNet without dropout, a simpler AlexNet): the dropout probability, the
five conv widths, the two hidden widths, and the original paper's local response normalization.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .geometry import out_side, smallest_input
from .registry import DROPOUT, ModelKwarg, boolean, positive_ints, positive_ints_or_empty, register_model

# (kernel, stride, padding) of every layer that changes the spatial size, in order.
_STEPS = [(11, 4, 1), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 2, 0)]

BOOK_CHANNELS = (96, 256, 384, 384, 256)  # the five conv layers' output channels
BOOK_HIDDEN = (4096, 4096)


def _lrn(on: bool) -> list[nn.Module]:
    # The original paper's constants (Krizhevsky et al. 2012, section 3.3); D2L 7.1 leaves LRN out.
    return [nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)] if on else []


class AlexNet(nn.Sequential):
    """Five conv layers and three fully connected ones; the first FC width follows the input size."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 224,
        dropout: float = 0.5,
        channels: Sequence[int] = BOOK_CHANNELS,
        hidden: Sequence[int] = BOOK_HIDDEN,
        lrn: bool = False,
    ) -> None:
        side = out_side(image_size, _STEPS)  # 5 at 224, so the flatten is 256*5*5 = 6400
        c1, c2, c3, c4, c5 = channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, c1, kernel_size=11, stride=4, padding=1),
            nn.ReLU(),
            *_lrn(lrn),  # after the ReLU, before the pool, as in the paper
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(),
            *_lrn(lrn),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Flatten(),  # (B, c5 * side * side)
        ]
        features = c5 * side * side
        for h in hidden:
            layers += [nn.Linear(features, h), nn.ReLU(), nn.Dropout(p=dropout)]
            features = h
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)


_WIDTHS = positive_ints(BOOK_CHANNELS)
ALEXNET_KWARGS = {
    "dropout": DROPOUT,
    "channels": ModelKwarg("a list of 5 positive integers (one per conv layer)",
                          lambda v: _WIDTHS.valid(v) and len(v) == 5, [48, 128, 192, 192, 128]),
    "hidden": positive_ints_or_empty((1024, 1024)),
    "lrn": boolean(True),
}


@register_model(family="alexnet", book_resolution=224, min_resolution=smallest_input(_STEPS), kwargs=ALEXNET_KWARGS)
def alexnet(in_channels: int = 1, num_classes: int = 10, image_size: int = 224, **kwargs) -> AlexNet:
    """AlexNet for Fashion-MNIST as in D2L 7.1."""
    return AlexNet(in_channels, num_classes, image_size, **kwargs)
