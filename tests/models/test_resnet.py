"""ResNet (:mod:`cnnbench.models.resnet`): block order, stages and shortcuts, the zero-pad shortcut, the book's
block shapes at 224 and its CIFAR stem."""

from __future__ import annotations

import torch
from torch import nn

from cnnbench.models import build_model
from cnnbench.models.stats import block_shapes, count_parameters
from tests.helpers import meta, types


def test_resnet18_with_the_books_cifar_stem():
    """model.stem=cifar: D2L 13.6's resnet18, a 3x3/1 stem without max pooling (32 px stay 32 into stage 1)."""
    from cnnbench.models import build_model

    book = build_model("resnet18", in_channels=3, num_classes=10, image_size=32)
    net = build_model("resnet18", in_channels=3, num_classes=10, image_size=32, stem="cifar")
    stem = net[0]
    assert stem[0].kernel_size == (3, 3) and stem[0].stride == (1, 1) and len(stem) == 3
    first = torch.nn.Sequential(*list(net)[:2])  # stem and stage 1 (slicing a ResNet would rebuild one)
    assert first(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 32, 32)
    assert torch.nn.Sequential(*list(book)[:2])(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 8, 8)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_block_order_stages_and_shortcut():
    from cnnbench.models.resnet import Bottleneck, Residual, ZeroPadShortcut

    bottleneck = meta("resnet18", block="bottleneck", stages=[[256, 1], [512, 1]])
    blocks = [m for m in bottleneck.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 2 and not any(isinstance(m, Residual) for m in bottleneck.modules())
    assert [tuple(c.weight.shape) for c in (blocks[0].conv1, blocks[0].conv2, blocks[0].conv3)] == [
        (64, 64, 1, 1), (64, 64, 3, 3), (256, 64, 1, 1)]  # the stem gives 256 / 4 channels
    pre = meta("resnet18", order="pre")
    first = next(m for m in pre.modules() if isinstance(m, Residual))
    assert first.pre and types(pre)[-5:-3] == [nn.BatchNorm2d, nn.ReLU]  # BN-ReLU once after the last sum
    x = torch.rand(2, 64, 8, 8)
    block = Residual(64, 64, order="pre").eval()
    # pre-activation: the output is conv2(relu(bn2(conv1(relu(bn1(x)))))) + x, no ReLU after the sum
    expected = block.conv2(torch.relu(block.bn2(block.conv1(torch.relu(block.bn1(x)))))) + x
    assert torch.allclose(block(x), expected)
    assert (block(x) < 0).any()
    zero = meta("resnet18", shortcut="zero_pad")
    assert types(zero).count(ZeroPadShortcut) == 3
    assert count_parameters(zero) < count_parameters(meta("resnet18"))
    assert types(meta("resnet18", shortcut="conv_bn")).count(nn.BatchNorm2d) == 17 + 3
    assert len([m for m in meta("resnet18", stages=[[64, 1], [128, 3]]).modules() if isinstance(m, Residual)]) == 4


def test_zero_pad_shortcut_keeps_the_input_and_adds_zero_channels():
    from cnnbench.models.resnet import ZeroPadShortcut

    x = torch.rand(1, 2, 4, 4)
    y = ZeroPadShortcut(2, 5, stride=2)(x)
    assert y.shape == (1, 5, 2, 2)
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2]) and not y[:, 2:].any()


def test_resnet18_block_shapes_match_the_book_at_224():
    shapes = [b.shape for b in block_shapes(build_model("resnet18", image_size=224), 1, 224)]
    assert shapes == [
        (1, 64, 56, 56), (1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14), (1, 512, 7, 7),
        (1, 512, 1, 1), (1, 512), (1, 10),
    ]
