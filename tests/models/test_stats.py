"""Exact forward FLOP counts of cnnbench.models.stats.forward_flops (the numerator of every TFLOP/s figure)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnbench.models import build_model, get_model_spec, list_models
from cnnbench.models.stats import forward_flops, reference_flops

# torch.utils.flop_counter counts 2 FLOPs per multiply-add of a conv or linear layer, and nothing for
# biases, pooling, activations or batch norm. Per image (batch 1):
#   conv:   2 * C_out * H_out * W_out * C_in * kh * kw
#   linear: 2 * in_features * out_features
#
# LeNet at 28x28 (D2L 6.6):
#   conv1 1->6, 5x5, pad 2: 28x28 out   2 * 6 * 28 * 28 * 1 * 25  = 235_200
#   avgpool 2/2 -> 6x14x14                                          0
#   conv2 6->16, 5x5: 10x10 out          2 * 16 * 10 * 10 * 6 * 25 = 480_000
#   avgpool 2/2 -> 16x5x5, flatten 400                             0
#   linear 400->120                      2 * 400 * 120             =  96_000
#   linear 120->84                       2 * 120 * 84              =  20_160
#   linear 84->10                        2 * 84 * 10               =   1_680
#                                                           total    833_040
LENET_28 = 235_200 + 480_000 + 96_000 + 20_160 + 1_680
# LeNet-BN at 28x28 (D2L 8.5): no padding on conv1, so 24x24 -> 12x12 -> 8x8 -> 4x4, flatten 256:
#   conv1 2 * 6 * 24 * 24 * 1 * 25 = 172_800;  conv2 2 * 16 * 8 * 8 * 6 * 25 = 307_200
#   linear 2 * 256 * 120 = 61_440;  2 * 120 * 84 = 20_160;  2 * 84 * 10 = 1_680;  BN: 0
#                                                           total    563_280
LENET_BN_28 = 172_800 + 307_200 + 61_440 + 20_160 + 1_680


def test_lenet_flops_at_28_are_the_hand_count() -> None:
    assert LENET_28 == 833_040 and LENET_BN_28 == 563_280
    lenet = build_model("lenet", in_channels=1, num_classes=10, image_size=28)
    assert forward_flops(lenet, 1, 28) == LENET_28
    lenet_bn = build_model("lenet_bn", in_channels=1, num_classes=10, image_size=28)
    assert forward_flops(lenet_bn, 1, 28) == LENET_BN_28


def test_flops_scale_with_input_channels() -> None:
    """Only conv1 sees the input channels: 3 channels add 2 * (2 * 6 * 28 * 28 * 25) FLOPs to LeNet."""
    model = build_model("lenet", in_channels=3, num_classes=10, image_size=28)
    assert forward_flops(model, 3, 28) == LENET_28 + 2 * 235_200


def _hooked_conv_linear_flops(model: nn.Module) -> tuple[list[int], list]:
    """Forward hooks adding 2 * multiply-adds per image of every Conv2d and Linear into a 1-element list."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            # per image: each output (C_out, H_out, W_out) element is a C_in/groups * kh * kw dot product
            total[0] += 2 * output[0].numel() * (module.in_channels // module.groups) * kh * kw
        else:  # nn.Linear, per image: out_features dot products of in_features terms each
            total[0] += 2 * output[0].numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return total, [m.register_forward_hook(hook) for m in layers]


@pytest.mark.parametrize("name, size",
                         [("alexnet", 224), ("resnet18", 96), ("densenet", 96), ("googlenet", 96)])
def test_flops_equal_an_independent_count_of_every_conv_and_linear(name: str, size: int) -> None:
    """The counter's total is exactly the sum over the conv/linear layers, counted by hooks."""
    model = build_model(name, in_channels=1, num_classes=10, image_size=size)
    hooked, handles = _hooked_conv_linear_flops(model)
    try:
        flops = forward_flops(model, 1, size)  # the hooks fire during forward_flops' own forward pass
    finally:
        for h in handles:
            h.remove()
    assert hooked[0] > 1e8  # hundreds of MFLOPs to GFLOPs: the hooks did see the network
    assert flops == hooked[0]


@pytest.mark.parametrize("name", list_models())
def test_hook_count_equals_torch_flop_counter_for_every_network(name: str) -> None:
    """forward_flops counts with hooks (no dispatch mode, whose import costs a run 1.2 s): the figure must
    be FlopCounterMode's exactly, for every registered network at its book resolution."""
    size = get_model_spec(name).book_resolution
    model = build_model(name, in_channels=1, num_classes=10)
    assert forward_flops(model, 1, size) == reference_flops(model, 1, size) > 0


class _Bilinear(nn.Module):
    """A layer the hooks do not know: a matmul that only the dispatch mode sees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ torch.ones(x[0].numel(), 7)


def test_unknown_layers_are_counted_by_the_dispatch_mode() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), _Bilinear())  # conv: 2*2*26*26*9; matmul: 2*(2*26*26)*7
    assert forward_flops(model, 1, 28) == 2 * 2 * 26 * 26 * 9 + 2 * 2 * 26 * 26 * 7
