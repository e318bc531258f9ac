"""fused_cpu.c's max pool (and the ReLU after it): ATen's numbers bit for bit, forward and backward, in both
layouts and both of the precisions cnnbench trains in; swapped in only where it computes what the model asked."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnbench.models import build_model
from cnnbench.speed.cpu import fused as fused_cpu
from cnnbench.speed.cpu.fused import Absorbed, MaxPool2dKernel, load_library, max_pool_eligible, use_fused_kernels
from cnnbench.speed.cpu.kernels import pool_before_relu, use_fast_pooling

needs_kernels = pytest.mark.skipif(load_library() is None, reason="no C compiler or no GNU OpenMP here")

# (kernel, stride, padding): VGG's 2x2 (windows that tile the image), AlexNet/NiN's 3x3/2, GoogLeNet/ResNet's
# 3x3/2 padded, the Inception branch's 3x3/1, overlapping 2x2/1, and a rectangular one
GEOMETRIES = [(2, 2, 0), (3, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), ((2, 3), (1, 2), (1, 0))]
# channels: one 16-lane vector, fewer (the scalar tail), vectors and a tail
SHAPES = [(3, 16, 12, 10), (2, 5, 9, 11), (2, 40, 7, 8)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the last bit, NaN where the other has NaN."""
    return a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _input(shape, dtype, channels_last: bool) -> torch.Tensor:
    """Integers (ties in every window), -inf, NaN and zeros of both signs (the ReLU's edge)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2).round()
    x[0, 0, 0, :3] = float("nan")
    x[0, -1, 1, 1:4] = float("-inf")
    x[-1, 0, 2, :] = -0.0
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@needs_kernels
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, channels_last",
                         list(itertools.product((torch.float32, torch.bfloat16), (False, True))))
@pytest.mark.parametrize("relu", [False, True])
def test_the_kernel_matches_atens_pool_and_relu_bit_for_bit(geometry, shape, dtype, channels_last, relu):
    """Output, its layout and the input gradient equal ATen's max_pool2d (then relu): the first maximum of a
    window, NaN taken, gradients added in ATen's order (bf16 rounded after each addition)."""
    kernel, stride, padding = geometry
    x = _input(shape, dtype, channels_last)
    ref_in, in_ = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = F.max_pool2d(ref_in, kernel, stride, padding)
    ref = F.relu(ref) if relu else ref
    pool = nn.MaxPool2d(kernel, stride, padding)
    layers = nn.Sequential(pool, nn.ReLU()) if relu else nn.Sequential(pool)
    assert use_fused_kernels(layers) == ["0"]
    out = layers(in_)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grad[0, 0, 0, 0] = float("nan")
    ref.backward(grad)
    out.backward(grad)
    assert out.grad_fn.name().endswith("_MaxPoolBackward")  # the kernel ran, not the fallback
    assert _same(out, ref)
    assert out.stride() == ref.stride()
    assert _same(in_.grad, ref_in.grad)
    assert in_.grad.stride() == ref_in.grad.stride()


@needs_kernels
def test_the_relu_it_absorbs_passes_no_gradient_where_the_maximum_is_not_positive():
    """A window of negatives (maximum -1), of zeros and of a positive: only the positive one's gradient
    reaches its input place."""
    x = torch.tensor([[[[-3.0, -1.0, 0.0, 0.0, 2.0, 1.0]]]]).requires_grad_()
    layers = nn.Sequential(nn.MaxPool2d((1, 2)), nn.ReLU())
    use_fused_kernels(layers)
    out = layers(x)
    out.backward(torch.ones_like(out))
    assert out.tolist() == [[[[0.0, 0.0, 2.0]]]]
    assert x.grad.tolist() == [[[[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]]]]


@needs_kernels
@pytest.mark.parametrize("case", ["float64", "unbatched", "strided", "no kernels"])
@pytest.mark.parametrize("relu", [False, True])
def test_inputs_the_kernel_does_not_take_go_through_atens_pool_and_still_get_the_relu(case, relu, monkeypatch):
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64 if case == "float64" else torch.float32)
    x = {"unbatched": x[0], "strided": x[..., ::2]}.get(case, x)
    layers = nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.ReLU()) if relu else nn.Sequential(nn.MaxPool2d(3, 2, 1))
    use_fused_kernels(layers)
    assert type(layers[0]) is MaxPool2dKernel
    if case == "no kernels":
        monkeypatch.setattr(fused_cpu, "load_library", lambda: None)
    out = layers(x.requires_grad_())
    assert "_MaxPool" not in out.grad_fn.name()
    ref = F.max_pool2d(x, 3, 2, 1)
    assert torch.equal(out, F.relu(ref) if relu else ref)


def test_which_pools_it_takes():
    assert max_pool_eligible(nn.MaxPool2d(3, 2, 1))
    assert max_pool_eligible(nn.MaxPool2d((15, 16)))  # 240 values: offsets fit in a byte
    assert not max_pool_eligible(nn.MaxPool2d(16))  # 256 values do not
    assert not max_pool_eligible(nn.MaxPool2d(2, return_indices=True))
    assert not max_pool_eligible(nn.MaxPool2d(2, ceil_mode=True))
    assert not max_pool_eligible(nn.MaxPool2d(2, dilation=2))
    assert not max_pool_eligible(nn.MaxPool1d(2))
    assert not max_pool_eligible(nn.AdaptiveMaxPool2d(1))


@needs_kernels
def test_the_swap_absorbs_a_following_relu_inside_plain_sequentials_only():
    class Custom(nn.Sequential):  # its own forward: the children's order says nothing about the data flow
        def forward(self, x):
            return super().forward(x)

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.ReLU(),          # 1: pool + ReLU
        nn.MaxPool2d(3, 1, 1), nn.Sigmoid(),                      # 3: the pool alone
        nn.ReLU(), nn.MaxPool2d(2, return_indices=False, ceil_mode=True),  # 6: not eligible
        Custom(nn.MaxPool2d(2), nn.ReLU()),                       # 7.0: the pool alone
    )
    keys = list(model.state_dict())
    assert use_fused_kernels(model) == ["1", "3", "7.0"]
    assert [type(m) for m in model[:7]] == [nn.Conv2d, MaxPool2dKernel, Absorbed, MaxPool2dKernel, nn.Sigmoid,
                                            nn.ReLU, nn.MaxPool2d]
    assert [type(m) for m in model[7]] == [MaxPool2dKernel, nn.ReLU]
    assert model[1].__dict__.get("_absorbed_relu") and not model[3].__dict__.get("_absorbed_relu")
    assert not model[7][0].__dict__.get("_absorbed_relu")
    assert list(model.state_dict()) == keys
    x = torch.randn(2, 3, 16, 16)
    h = F.relu(F.max_pool2d(model[0](x), 2))
    h = torch.sigmoid(F.max_pool2d(h, 3, 1, 1))
    h = F.max_pool2d(F.relu(h), 2, ceil_mode=True)
    h = F.relu(F.max_pool2d(h, 2))
    assert torch.equal(model(x), h)  # the same computation, by hand


@needs_kernels
@pytest.mark.parametrize("name", ["alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet"])
def test_the_book_networks_train_bit_for_bit_the_same_with_the_kernel(name):
    """One bf16-autocast, channels-last training step at the book's resolution, as device=fast trains them:
    the same loss and the same gradient of every parameter, to the last bit."""
    torch.manual_seed(0)
    plain = build_model(name, in_channels=1, num_classes=10)
    use_fast_pooling(plain), pool_before_relu(plain)
    kernel = copy.deepcopy(plain)
    assert any(type(m) is MaxPool2dKernel for _ in [use_fused_kernels(kernel)] for m in kernel.modules())
    size = {"alexnet": 224, "vgg11": 224, "nin": 224}.get(name, 96)
    x = torch.randn(2, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([3, 7])
    results = []
    for model in (plain, kernel):
        model.to(memory_format=torch.channels_last)
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


@needs_kernels
def test_the_run_pools_with_the_kernel_and_the_switch_turns_it_off(fake_data, tmp_path):
    from tests.helpers import built, compose_fast

    for on in (True, False):
        cfg = compose_fast(fake_data, "model=vgg11", "dataset.resize=32", f"device.fused_kernels={str(on).lower()}")
        kinds = [type(m) for m in built(cfg, tmp_path / str(on)).model.modules()]
        assert kinds.count(MaxPool2dKernel) == (5 if on else 0)
        assert kinds.count(nn.MaxPool2d) == (0 if on else 5)
