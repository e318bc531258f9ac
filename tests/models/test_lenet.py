"""LeNet and LeNet-BN (:mod:`cnnbench.models.lenet`): the knobs swap the layers they name, the book's flatten sizes."""

from __future__ import annotations

from torch import nn

from cnnbench.models import build_model
from cnnbench.models.stats import count_parameters
from tests.helpers import types


def test_lenet_pooling_and_activation_swap_the_layers_they_name():
    model = build_model("lenet", pooling="max", activation="relu")
    kinds = types(model)
    assert kinds.count(nn.MaxPool2d) == 2 and nn.AvgPool2d not in kinds
    assert kinds.count(nn.ReLU) == 4 and nn.Sigmoid not in kinds
    assert types(build_model("lenet", activation="tanh")).count(nn.Tanh) == 4


def test_lenet_channels_kernels_and_hidden_set_the_shapes():
    model = build_model("lenet", channels=[16, 32, 64], kernel_sizes=[3], hidden=[256])
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(16, 1, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    # 28 (padded by 2) -> conv3 30 -> pool 15 -> conv3 13 -> pool 6 -> conv3 4 -> pool 2: 64 * 2 * 2 features
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 256), (256, 10)]
    assert [m.out_features for m in build_model("lenet", hidden=[]) if isinstance(m, nn.Linear)] == [10]


def test_lenet_batch_norm_place_bias_and_dropout():
    after = build_model("lenet_bn", bn_position="after")
    assert [type(m) for m in after][:4] == [nn.Conv2d, nn.Sigmoid, nn.BatchNorm2d, nn.AvgPool2d]
    before = build_model("lenet_bn")
    assert [type(m) for m in before][:4] == [nn.Conv2d, nn.BatchNorm2d, nn.Sigmoid, nn.AvgPool2d]
    no_bias = build_model("lenet_bn", bias=False)
    weighted = [m for m in no_bias if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(m.bias is None for m in weighted[:-1]) and weighted[-1].bias is not None  # the classifier keeps its
    assert count_parameters(before) - count_parameters(no_bias) == 6 + 16 + 120 + 84
    drop = [m for m in build_model("lenet", dropout=0.3) if isinstance(m, nn.Dropout)]
    assert [m.p for m in drop] == [0.3, 0.3]  # after each hidden layer's activation
    assert nn.Dropout not in types(build_model("lenet"))  # the book's: no dropout layer at all


def test_lenet_flatten_sizes_follow_the_book():
    assert build_model("lenet")[7].in_features == 16 * 5 * 5
    assert build_model("lenet_bn")[9].in_features == 16 * 4 * 4
    assert build_model("vgg11")[6].in_features == (512 // 4) * 7 * 7
