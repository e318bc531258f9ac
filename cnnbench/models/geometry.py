"""Spatial arithmetic shared by the model families.

The fully connected layers of LeNet, AlexNet and VGG take a flattened feature map whose size depends on
the input resolution; each family describes its downsampling as a list of (kernel, stride, padding)
steps, and these helpers turn that into the final side length and the smallest input that survives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# One downsampling step: (kernel, stride, padding), as for nn.Conv2d / nn.MaxPool2d / nn.AvgPool2d.
Step = tuple[int, int, int]


def out_side(size: int, steps: Iterable[Step]) -> int:
    """Side length (pixels) after applying ``steps`` to a ``size`` x ``size`` input; 0 if it vanishes."""
    for kernel, stride, padding in steps:
        size = (size + 2 * padding - kernel) // stride + 1
        if size < 1:
            return 0
    return size


def smallest_input(steps: Sequence[Step], limit: int = 4096) -> int:
    """Smallest input side for which every step leaves at least one pixel."""
    for size in range(1, limit + 1):
        if out_side(size, steps) >= 1:
            return size
    raise ValueError("no input size up to {limit} survives these steps")
