"""DenseNet (:mod:`cnnbench.models.densenet`): growth, compression, pooling and bottleneck knobs."""

from __future__ import annotations

from torch import nn

from tests.helpers import meta, types


def test_densenet_growth_compression_pool_and_bottleneck():
    from cnnbench.models.densenet import DenseBlock

    model = meta("densenet", growth_rate=16, compression=0.25, transition_pool="max", bottleneck=True)
    transitions = [m for m in model if isinstance(m, nn.Sequential) and any(isinstance(k, nn.MaxPool2d) for k in m)
                   and any(isinstance(k, nn.Conv2d) and k.kernel_size == (1, 1) for k in m)]
    assert len(transitions) == 3 and nn.AvgPool2d not in types(model)
    first_block = next(m for m in model if isinstance(m, DenseBlock))
    assert first_block.out_channels == 64 + 4 * 16
    assert transitions[0][2].out_channels == int((64 + 4 * 16) * 0.25)
    kernels = [k.kernel_size for k in first_block.modules() if isinstance(k, nn.Conv2d)]
    assert kernels == [(1, 1), (3, 3)] * 4  # DenseNet-B: a 1x1 to 4 x growth before each 3x3
    assert first_block.net[0][2].out_channels == 4 * 16
