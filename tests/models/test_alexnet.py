"""AlexNet (:mod:`cnnbench.models.alexnet`): widths, LRN and dropout knobs, the book's flatten size, its
smallest input."""

from __future__ import annotations

import pytest
from torch import nn

from cnnbench.models import InputTooSmallError, build_model
from cnnbench.models.stats import block_shapes
from tests.helpers import meta


def test_alexnet_widths_lrn_and_dropout():
    model = meta("alexnet", channels=[48, 128, 192, 192, 128], hidden=[1024], lrn=True, dropout=0.0)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [48, 128, 192, 192, 128]
    kinds = [type(m) for m in model]
    assert kinds.count(nn.LocalResponseNorm) == 2
    assert kinds[:4] == [nn.Conv2d, nn.ReLU, nn.LocalResponseNorm, nn.MaxPool2d]  # after the ReLU, before the pool
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [(128 * 25, 1024),
                                                                                            (1024, 10)]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.0]


def test_alexnet_flattens_to_6400_at_224():
    shapes = [(b.name, b.shape) for b in block_shapes(build_model("alexnet"), 1, 224)]
    assert ("Flatten", (1, 6400)) in shapes
    assert build_model("alexnet")[14].in_features == 6400


def test_alexnet_at_28_names_the_smallest_size():
    with pytest.raises(InputTooSmallError) as err:
        build_model("alexnet", image_size=28)
    assert "alexnet cannot take 28x28 inputs" in str(err.value)
    assert "smallest size that works is 65" in str(err.value)
