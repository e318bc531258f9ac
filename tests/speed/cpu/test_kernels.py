"""The CPU's fast pooling (2x2 average pools as strided adds, max pools before the ReLU they follow): ATen's
numbers bit for bit, swapped in by cnnbench's build only; and the convolution weight gradients' layout."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from cnnbench.models import build_model
from cnnbench.speed.cpu.kernels import (
    GEMM_MARGIN,
    NHWC_MARGIN,
    AvgPool2x2,
    Conv2dGemmWeightGrad,
    Conv2dNHWCWeightGrad,
    faster_as_gemm,
    faster_in_nhwc,
    gemm_eligible,
    gemm_weight_grad,
    pool_before_relu,
    set_gemm_weight_grads,
    set_nhwc_weight_grads,
    time_conv_weight_grads,
    time_gemm_weight_grads,
    use_fast_pooling,
)


@pytest.mark.parametrize("shape,layout,dtype", [
    ((8, 6, 28, 28), torch.contiguous_format, torch.float32),
    ((8, 6, 28, 28), torch.channels_last, torch.float32),
    ((4, 3, 11, 9), torch.contiguous_format, torch.float32),  # odd sides: the last row/column is dropped
    ((4, 16, 10, 10), torch.contiguous_format, torch.float64),
    ((4, 16, 10, 10), torch.contiguous_format, torch.bfloat16),  # ATen's kernel (fp32 accumulation)
])
def test_fast_pool_matches_aten_forward_and_backward_exactly(shape, layout, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=layout)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = nn.AvgPool2d(2, 2)(a), AvgPool2x2(2, 2)(b)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    poison = torch.full(shape, float("nan"), dtype=dtype)  # freed memory the next gradient may reuse:
    del poison  # a dropped row/column left unwritten would then show as NaN, not as a lucky zero
    out.backward(grad)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.equal(out, ref)
    assert torch.equal(b.grad, a.grad)
    assert b.grad.is_contiguous(memory_format=layout)


def test_only_2x2_stride_2_pools_are_swapped():
    model = nn.Sequential(nn.AvgPool2d(2, 2), nn.AvgPool2d(2), nn.AvgPool2d(3, 2), nn.AvgPool2d(2, 2, padding=1),
                          nn.AvgPool2d(2, 2, ceil_mode=True), nn.MaxPool2d(2, 2), nn.AdaptiveAvgPool2d(1))
    assert use_fast_pooling(model) == 2
    assert [type(m) for m in model] == [AvgPool2x2, AvgPool2x2, nn.AvgPool2d, nn.AvgPool2d, nn.AvgPool2d,
                                        nn.MaxPool2d, nn.AdaptiveAvgPool2d]


def test_the_book_models_pool_the_same_after_the_swap():
    for name, swaps in (("lenet", 2), ("lenet_bn", 2), ("densenet", 3)):
        torch.manual_seed(0)
        plain = build_model(name, in_channels=1, num_classes=10, image_size=96 if name == "densenet" else 28)
        fast = build_model(name, in_channels=1, num_classes=10, image_size=96 if name == "densenet" else 28)
        fast.load_state_dict(plain.state_dict())
        keys = set(fast.state_dict())
        assert use_fast_pooling(fast) == swaps, name
        assert set(fast.state_dict()) == keys  # no parameters or buffers: checkpoints are unchanged
        x = torch.randn(4, 1, *(2 * (96 if name == "densenet" else 28,)))
        plain.eval(), fast.eval()
        with torch.no_grad():
            assert torch.equal(fast(x), plain(x)), name


def test_max_pools_move_before_the_relu_they_follow_in_plain_sequentials():
    class Custom(nn.Sequential):  # its own forward: the children's order says nothing about the data flow
        def forward(self, x):
            return super().forward(x)

    inner = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2, 2),          # swapped
                          nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),                   # swapped
                          nn.ReLU(inplace=True), nn.MaxPool2d(2, return_indices=True),  # indices: no
                          nn.Sigmoid(), nn.MaxPool2d(2), nn.ReLU(), nn.AvgPool2d(2),   # not ReLU -> max pool
                          inner, Custom(nn.ReLU(), nn.MaxPool2d(2)))
    keys = list(model.state_dict())
    assert pool_before_relu(model) == 3
    assert [type(m) for m in model][:7] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.MaxPool2d, nn.ReLU, nn.ReLU,
                                            nn.MaxPool2d]
    assert [type(m) for m in inner] == [nn.MaxPool2d, nn.ReLU]
    assert [type(m) for m in model[-1]] == [nn.ReLU, nn.MaxPool2d]
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "googlenet", "resnet18", "densenet"])
def test_pooled_before_the_relu_the_book_networks_train_bit_for_bit_the_same(name):
    """One training step at the book's resolution: the same loss and the same gradient of every parameter,
    to the last bit (dropout draws the same masks: the same seed, the same order of draws)."""
    torch.manual_seed(0)
    plain = build_model(name, in_channels=1, num_classes=10)
    pooled = build_model(name, in_channels=1, num_classes=10)
    pooled.load_state_dict(plain.state_dict())
    assert pool_before_relu(pooled) > 0
    size = {"alexnet": 224, "vgg11": 224}.get(name, 96)
    x, y = torch.randn(2, 1, size, size), torch.tensor([3, 7])
    results = []
    for model in (plain, pooled):
        torch.manual_seed(1)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_a_run_with_fast_pooling_pools_before_the_relu(fake_data, tmp_path):
    from tests.helpers import built, compose_fast

    def relu_then_max(model: nn.Module) -> int:
        return sum(type(a) is nn.ReLU and isinstance(b, nn.MaxPool2d) for m in model.modules()
                   if isinstance(m, nn.Sequential) for a, b in zip(list(m)[:-1], list(m)[1:], strict=True))

    for on in (True, False):
        cfg = compose_fast(fake_data, "model=vgg11", "dataset.resize=32", f"device.fast_pooling={str(on).lower()}")
        assert relu_then_max(built(cfg, tmp_path / str(on)).model) == (0 if on else 5)


def test_the_run_uses_it_on_the_cpu_and_the_switch_turns_it_off(fake_data, tmp_path):
    """Same losses with and without it (bit for bit); the model trained really holds the fast pools."""
    from cnnbench.run.train import train
    from tests.helpers import built, compose_fast

    common = ("model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=1", "trainer.limit_train_batches=4",
              "trainer.logs_per_epoch=4", "trainer.limit_eval_batches=1", "trainer.checkpoint=false",
              "device.fused_kernels=false")  # the fused kernels would absorb the pools (tests/test_fused_cpu.py)
    runs = {}
    for on in (True, False):
        cfg = compose_fast(fake_data, *common, f"device.fast_pooling={str(on).lower()}")
        pools = {type(m) for m in built(cfg, tmp_path / f"b{on}").model.modules() if isinstance(m, nn.AvgPool2d)}
        assert pools == ({AvgPool2x2} if on else {nn.AvgPool2d})
        summary = train(cfg, tmp_path / str(on))
        assert summary["status"] == "completed", summary["error"]
        assert summary["speed"]["fast_pooling"] is on
        lines = (tmp_path / str(on) / "metrics.jsonl").read_text().splitlines()
        runs[on] = [line for line in lines if '"kind": "train"' in line]
    assert len(runs[True]) == 4
    losses = [[json.loads(line)["train/loss"] for line in runs[on]] for on in (True, False)]
    assert losses[0] == losses[1]



# ----------------------------------------------------------------------------- convolution weight gradients

def _swapped_copy(conv: nn.Conv2d) -> nn.Conv2d:
    import copy

    fast = copy.deepcopy(conv)
    assert set_nhwc_weight_grads(nn.Sequential(fast), ["0"]) == ["0"]
    return fast


@pytest.mark.parametrize("kwargs,dtype", [
    (dict(in_channels=6, out_channels=16, kernel_size=5), torch.float32),  # LeNet's second convolution
    (dict(in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1), torch.float32),
    (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=2, bias=False), torch.float32),
    (dict(in_channels=6, out_channels=16, kernel_size=5, dilation=2), torch.float64),
])
def test_the_nhwc_weight_gradient_equals_atens(kwargs, dtype):
    torch.manual_seed(0)
    plain = nn.Conv2d(**kwargs).to(dtype)
    fast = _swapped_copy(plain)
    x = torch.randn(8, kwargs["in_channels"], 14, 14, dtype=dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, out = plain(a), fast(b)
    assert out.grad_fn.name() == "_Conv2dNHWCWeightGradBackward"  # the swapped backward runs
    assert torch.equal(out, ref)  # the forward is ATen's
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    assert torch.equal(b.grad, a.grad)  # the input gradient is ATen's too
    # The weight gradient: the same sums in another order, so equal up to rounding, relative to its size
    eps = torch.finfo(dtype).eps
    for mine, atens in [(fast.weight, plain.weight)] + ([(fast.bias, plain.bias)] if plain.bias is not None else []):
        scale = float(atens.grad.abs().max())
        torch.testing.assert_close(mine.grad, atens.grad, rtol=0, atol=100 * eps * scale)
    assert fast.weight.grad.is_contiguous()


def test_the_swapped_convolution_falls_back_to_aten_where_it_does_not_apply():
    fast = _swapped_copy(nn.Conv2d(6, 16, 5))
    x = torch.randn(4, 6, 12, 12)
    assert fast(x).grad_fn.name() == "_Conv2dNHWCWeightGradBackward"
    assert fast(x.contiguous(memory_format=torch.channels_last)).grad_fn.name() == "ConvolutionBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).grad_fn.name() == "ConvolutionBackward0"
    fast.weight.requires_grad_(False)
    assert fast(x.requires_grad_()).grad_fn.name() == "ConvolutionBackward0"


def test_set_nhwc_weight_grads_swaps_exactly_the_named_layers_in_place():
    model = build_model("lenet_bn", in_channels=1, num_classes=10)
    params, keys = [id(p) for p in model.parameters()], set(model.state_dict())
    assert set_nhwc_weight_grads(model, ["4"]) == ["4"]
    assert type(model[4]) is Conv2dNHWCWeightGrad and type(model[0]) is nn.Conv2d
    assert [id(p) for p in model.parameters()] == params  # an optimizer built before still holds them
    assert set(model.state_dict()) == keys  # checkpoints are unchanged
    assert set_nhwc_weight_grads(model, ["0"]) == ["0"]  # another choice (rank 0's) undoes the first
    assert type(model[4]) is nn.Conv2d and type(model[0]) is Conv2dNHWCWeightGrad
    assert set_nhwc_weight_grads(model, []) == [] and type(model[0]) is nn.Conv2d


def _fake_weight_grad_timer(model: nn.Module, seconds: dict[str, dict[str, float]]):
    """A stand-in for the weight-gradient timing's clock (``cpu_kernels._time_call``): it still makes each
    call (ATen's or the channels-last weight gradient, on the timing's own tensors) but returns the test's
    seconds, ``seconds[layer][way]``, so the outcome does not depend on the machine's load. The layer is
    read from the weight the timed call holds (the layer's own parameter), the way from its name
    ("aten" or "nhwc"); ``calls`` lists (layer, way) of every timed call in order."""
    layers = {m.weight.data_ptr(): name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def time_call(fn) -> float:
        fn()
        held = [cell.cell_contents for cell in fn.__closure__ or ()]
        (layer,) = {layers[t.data_ptr()] for t in held if isinstance(t, torch.Tensor) and t.data_ptr() in layers}
        time_call.calls.append((layer, fn.__name__))
        return seconds[layer][fn.__name__]

    time_call.calls = []
    return time_call


def test_the_weight_gradient_timing_covers_each_convolution_and_leaves_the_run_untouched(monkeypatch):
    """Each convolution is timed, ATen's way against the channels-last one, the ratio is of their times, a
    layer whose first ATen call takes over MAX_TUNED_CALL_S is left out, and the timing changes nothing of
    the run (its random numbers, BatchNorm's statistics, the layers' classes)."""
    import cnnbench.speed.cpu.kernels as kernels

    model = build_model("lenet_bn", in_channels=1, num_classes=10)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(64, 1, 28, 28)
    rng = torch.random.get_rng_state()
    assert 2 ** -6 < kernels.MAX_TUNED_CALL_S  # every time below is under the cut-off (powers of two: exact ratios)
    timer = _fake_weight_grad_timer(model, {"0": {"aten": 2 ** -7, "nhwc": 2 ** -6},
                                            "4": {"aten": 2 ** -7, "nhwc": 2 ** -8}})
    monkeypatch.setattr(kernels, "_time_call", timer)
    ratios = time_conv_weight_grads(model, example, 64)
    assert ratios == {"0": 2.0, "4": 0.5}
    assert set(timer.calls) == {("0", "aten"), ("0", "nhwc"), ("4", "aten"), ("4", "nhwc")}
    assert torch.equal(torch.random.get_rng_state(), rng)  # its random tensors come from its own generator
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BatchNorm statistics too
    assert model.training and type(model[4]) is nn.Conv2d  # timing swaps nothing
    # Layer 0's first ATen call takes longer than the cut-off: it is neither timed further nor in the result
    slow = _fake_weight_grad_timer(model, {"0": {"aten": kernels.MAX_TUNED_CALL_S + 2 ** -10, "nhwc": 2 ** -8},
                                           "4": {"aten": 2 ** -7, "nhwc": 2 ** -8}})
    monkeypatch.setattr(kernels, "_time_call", slow)
    assert time_conv_weight_grads(model, example, 64) == {"4": 0.5}
    assert [way for layer, way in slow.calls if layer == "0"] == ["aten"]
    assert faster_in_nhwc({"0": 1.6, "4": 0.6, "9": NHWC_MARGIN, "12": 0.9}) == ["4", "9"]


@pytest.mark.parametrize("setting,deterministic,timed", [("auto", False, True), ("native", False, False),
                                                        ("auto", True, False)])
def test_the_run_trains_with_the_layers_the_timing_chose(fake_data, tmp_path, monkeypatch, setting, deterministic,
                                                         timed):
    """device.conv_weight_grad=auto times the layers (here a stand-in timer says: only layer 4 is faster in
    NHWC) and trains with exactly those swapped; native and deterministic runs time nothing; the losses
    stay ATen's up to rounding."""
    import cnnbench.speed.settings as speed
    from cnnbench.run.train import train
    from tests.helpers import compose_fast

    monkeypatch.setattr(speed, "time_conv_weight_grads", lambda model, x, batch: {"0": 1.6, "4": 0.5})
    seen = set()
    hook = nn.modules.module.register_module_forward_hook(
        lambda m, inputs, out: seen.add((type(m), out.grad_fn.name())) if isinstance(m, nn.Conv2d) and m.training
        and out.grad_fn is not None else None)
    common = ("model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=1", "trainer.limit_train_batches=4",
              "trainer.logs_per_epoch=4", "trainer.limit_eval_batches=1", "trainer.checkpoint=false")
    try:
        summary = train(compose_fast(fake_data, *common, f"device.conv_weight_grad={setting}",
                                     f"trainer.deterministic={str(deterministic).lower()}"), tmp_path / "run")
        train(compose_fast(fake_data, *common, f"trainer.deterministic={str(deterministic).lower()}"), tmp_path / "ref")
    finally:
        hook.remove()
    assert summary["status"] == "completed", summary["error"]
    speed_record = summary["speed"]
    assert speed_record["nhwc_weight_grads"] == (["4"] if timed else [])
    assert speed_record["conv_weight_grad_ratios"] == ({"0": 1.6, "4": 0.5} if timed else {})
    assert ((Conv2dNHWCWeightGrad, "_Conv2dNHWCWeightGradBackward") in seen) is timed
    losses = [[json.loads(line)["train/loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
               if '"kind": "train"' in line] for d in ("run", "ref")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_an_unknown_conv_weight_grad_setting_is_refused(fake_data, tmp_path):
    from cnnbench.run.train import train
    from tests.helpers import compose_fast

    summary = train(compose_fast(fake_data, "device.conv_weight_grad=nhwc"), tmp_path)
    assert summary["status"] == "failed" and "device.conv_weight_grad must be one of auto, native" in summary["error"]


# ----------------------------------------------------------------------------- weight gradients as one GEMM

GEMM_CASES = [  # (conv keyword arguments, input side): ResNet's 3x3, its strided 3x3 and 1x1 shortcut, a 7x7
    (dict(in_channels=8, out_channels=12, kernel_size=3, padding=1), 9),  # stem, a 5x5, a rectangle, no bias
    (dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, padding=1), 11),
    (dict(in_channels=8, out_channels=16, kernel_size=1, stride=2), 11),
    (dict(in_channels=1, out_channels=6, kernel_size=7, stride=2, padding=3), 20),
    (dict(in_channels=6, out_channels=4, kernel_size=5, padding=2, bias=False), 10),
    (dict(in_channels=5, out_channels=7, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0)), 9),
]


@pytest.mark.parametrize("kwargs, side", GEMM_CASES)
@pytest.mark.parametrize("dtype, layout", [(torch.float32, torch.contiguous_format),
                                           (torch.float32, torch.channels_last), (torch.bfloat16, torch.channels_last)])
def test_the_gemm_layer_trains_like_atens_convolution(kwargs, side, dtype, layout):
    """The output and the input gradient are ATen's bit for bit; the weight and bias gradients are the same sums
    in another order (equal to rounding); bf16 runs under autocast, as device=fast trains, and the gradients
    reach the float32 parameters in their own layout."""
    torch.manual_seed(0)
    plain = nn.Conv2d(**kwargs).to(memory_format=layout)
    gemm = nn.Conv2d(**kwargs).to(memory_format=layout)
    gemm.load_state_dict(plain.state_dict())
    assert set_gemm_weight_grads(gemm, [""]) == [""]
    x = torch.randn(4, kwargs["in_channels"], side, side).contiguous(memory_format=layout)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        ref, out = plain(a), gemm(b)
    assert out.grad_fn.name() == "_Conv2dGemmWeightGradBackward"
    assert out.dtype == ref.dtype == dtype and torch.equal(out, ref)
    grad = torch.randn(ref.shape).to(dtype)
    ref.backward(grad)
    out.backward(grad)
    assert torch.equal(b.grad, a.grad)
    assert gemm.weight.grad.is_contiguous(memory_format=layout)  # in the parameter's own layout
    # float32: sums of a few hundred products in another order; bf16: summed in float both ways, then rounded
    # once to bf16 (a different float sum can round to the neighbouring bf16 value: one step)
    ulps = 100 if dtype == torch.float32 else 1
    eps = torch.finfo(dtype).eps
    for mine, atens in [(gemm.weight, plain.weight)] + ([(gemm.bias, plain.bias)] if plain.bias is not None else []):
        assert mine.grad.dtype == torch.float32
        scale = float(atens.grad.abs().max())
        torch.testing.assert_close(mine.grad, atens.grad, rtol=ulps * eps, atol=ulps * eps * scale)


def test_gemm_weight_grad_is_the_weight_gradient_itself():
    """Against the definition, in float64: dW[o, c, i, j] = sum of grad[b, o, y, x] * xpad[b, c, y*s + i, x*s + j]."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64, generator=gen)
    weight = torch.empty(4, 2, 3, 2, dtype=torch.float64)
    grad = torch.randn(3, 4, 4, 4, dtype=torch.float64, generator=gen)  # stride 2, padding (1, 1)
    xp = nn.functional.pad(x, (1, 1, 1, 1))
    expected = torch.zeros_like(weight)
    for i in range(3):
        for j in range(2):
            patch = xp[:, :, i:i + 7:2, j:j + 7:2][:, :, :4, :4]  # (B, C, 4, 4)
            expected[:, :, i, j] = torch.einsum("boyx,bcyx->oc", grad, patch)
    torch.testing.assert_close(gemm_weight_grad(grad, x, weight, (2, 2), (1, 1)), expected)


def test_the_gemm_layer_falls_back_to_aten_where_it_does_not_train():
    gemm = nn.Conv2d(3, 4, 3)
    set_gemm_weight_grads(gemm, [""])
    x = torch.randn(2, 3, 8, 8)
    assert gemm(x).grad_fn.name() == "_Conv2dGemmWeightGradBackward"
    with torch.no_grad():
        assert gemm(x).grad_fn is None
    gemm.weight.requires_grad_(False)
    assert gemm(x.requires_grad_()).grad_fn.name() == "ConvolutionBackward0"


def test_which_convolutions_the_gemm_takes():
    assert gemm_eligible(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    assert not gemm_eligible(nn.Conv2d(4, 4, 3, groups=2))
    assert not gemm_eligible(nn.Conv2d(4, 4, 3, dilation=2))
    assert not gemm_eligible(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    assert not gemm_eligible(nn.Conv2d(4, 4, 3, padding="same"))
    frozen = nn.Conv2d(4, 4, 3)
    frozen.weight.requires_grad_(False)
    assert not gemm_eligible(frozen)


def test_set_gemm_weight_grads_swaps_exactly_the_named_layers_in_place():
    model = build_model("resnet18", in_channels=1, num_classes=10)
    params, keys = [id(p) for p in model.parameters()], set(model.state_dict())
    assert set_gemm_weight_grads(model, ["4.0.conv1", "4.1.conv2", "1"]) == ["4.0.conv1", "4.1.conv2"]
    assert type(model[4][0].conv1) is Conv2dGemmWeightGrad and type(model[4][0].conv2) is nn.Conv2d
    assert [id(p) for p in model.parameters()] == params and set(model.state_dict()) == keys
    assert set_gemm_weight_grads(model, ["3.0.conv1"]) == ["3.0.conv1"]  # another choice (rank 0's) undoes the first
    assert type(model[4][0].conv1) is nn.Conv2d
    assert set_gemm_weight_grads(model, []) == []


def test_the_gemm_timing_covers_each_convolution_gives_up_on_slow_ones_and_leaves_the_run_untouched(monkeypatch):
    """Each eligible convolution is timed in the run's dtype and layout, ATen's weight gradient against the GEMM;
    a layer whose first GEMM call takes over GEMM_GIVE_UP times ATen's is timed no further and left out; the
    timing changes nothing of the run (random numbers, BatchNorm's statistics, the layers' classes)."""
    import cnnbench.speed.cpu.kernels as kernels

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2),
                          nn.Conv2d(8, 8, 3, groups=2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = {m.weight.data_ptr(): name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    seconds = {"0": {"aten": 2 ** -6, "gemm": 2 ** -7}, "3": {"aten": 2 ** -8, "gemm": 2 ** -5}}
    calls, dtypes = [], set()

    def time_call(fn) -> float:
        fn()
        held = [cell.cell_contents for cell in fn.__closure__ or ()]
        tensors = [t for t in held if isinstance(t, torch.Tensor)]
        dtypes.update((t.dtype, t.is_contiguous(memory_format=torch.channels_last)) for t in tensors if t.dim() == 4)
        weight = next(t for t in tensors if t.dim() == 4 and t.shape[-1] == 3 and t.shape[0] in (4, 8))
        layer = "0" if weight.shape[0] == 4 else "3"
        calls.append((layer, fn.__name__))
        return seconds[layer][fn.__name__]

    monkeypatch.setattr(kernels, "_time_call", time_call)
    example = torch.randn(16, 1, 10, 10)
    rng = torch.random.get_rng_state()
    ratios = time_gemm_weight_grads(model, example, 16, torch.bfloat16, True)
    assert ratios == {"0": 0.5}  # layer 3's first GEMM took 8x ATen's; layer 4 (groups) is not eligible
    assert [way for layer, way in calls if layer == "3"] == ["gemm", "aten"]
    assert [way for layer, way in calls if layer == "0"].count("gemm") == 1 + kernels.GEMM_ROUNDS
    assert dtypes == {(torch.bfloat16, True)}
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(type(m) is nn.Conv2d for m in model if isinstance(m, nn.Conv2d)) and layers
    assert faster_as_gemm({"a": 0.2, "b": GEMM_MARGIN, "c": 0.9, "d": 1.5}) == ["a", "b"]


@pytest.mark.parametrize("setting, model, deterministic, timed", [
    ("auto", "resnet18", False, True), ("native", "resnet18", False, False), ("auto", "resnet18", True, False),
    ("auto", "lenet_bn", False, False)])
def test_the_run_trains_with_the_gemm_layers_the_timing_chose(fake_data, tmp_path, monkeypatch, caplog, setting,
                                                              model, deterministic, timed):
    """device.conv_weight_grad=auto times the bigger networks' convolutions (a stand-in timer: only 4.0.conv1
    is faster as a GEMM) and trains with exactly those swapped, said in the header; native, deterministic runs
    and the small networks (which time the channels-last copies instead) do not; the losses stay ATen's up to
    rounding."""
    import cnnbench.speed.settings as speed
    from cnnbench.run.train import train
    from tests.helpers import compose_fast

    monkeypatch.setattr(speed, "time_gemm_weight_grads",
                        lambda model, x, batch, dtype, cl: {"4.0.conv1": 0.5, "2.0.conv1": 1.6})
    monkeypatch.setattr(speed, "time_conv_weight_grads", lambda model, x, batch: {})
    caplog.set_level(logging.INFO, logger="cnnbench")
    seen = set()
    hook = nn.modules.module.register_module_forward_hook(
        lambda m, inputs, out: seen.add(type(m)) if isinstance(m, nn.Conv2d) and m.training else None)
    common = (f"model={model}", "dataset.resize=32", "trainer.batch_size=8", "trainer.epochs=1",
              "trainer.limit_train_batches=2", "trainer.logs_per_epoch=2", "trainer.limit_eval_batches=1",
              "trainer.checkpoint=false", f"trainer.deterministic={str(deterministic).lower()}")
    try:
        summary = train(compose_fast(fake_data, *common, f"device.conv_weight_grad={setting}"), tmp_path / "run")
        train(compose_fast(fake_data, *common), tmp_path / "ref")
    finally:
        hook.remove()
    assert summary["status"] == "completed", summary["error"]
    assert summary["speed"]["gemm_weight_grads"] == (["4.0.conv1"] if timed else [])
    assert summary["speed"]["gemm_weight_grad_ratios"] == ({"4.0.conv1": 0.5, "2.0.conv1": 1.6} if timed else {})
    assert (Conv2dGemmWeightGrad in seen) is timed
    assert ("GEMM weight gradients on 1 layers" in caplog.text) is timed  # the run's header says so
    losses = [[json.loads(line)["train/loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
               if '"kind": "train"' in line] for d in ("run", "ref")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)

