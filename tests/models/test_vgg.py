"""VGG (:mod:`cnnbench.models.vgg`): the conv architecture, batch norm and width knobs."""

from __future__ import annotations

from torch import nn

from tests.helpers import meta, types


def test_vgg_conv_arch_batch_norm_and_width():
    model = meta("vgg11", conv_arch=[[1, 64], [1, 128], [2, 256]], batch_norm=True, image_size=28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64]  # the book's divisor 4
    assert types(model).count(nn.BatchNorm2d) == 4 and types(model).count(nn.MaxPool2d) == 3
    assert next(m for m in model if isinstance(m, nn.Linear)).in_features == 64 * 3 * 3  # 28 -> 14 -> 7 -> 3
    wide = meta("vgg11", width_div=1)
    assert [m.out_channels for m in wide.modules() if isinstance(m, nn.Conv2d)][0] == 64
