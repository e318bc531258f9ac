"""The CPU's fast pooling (2x2 average pools as strided adds, max pools before the ReLU they follow): ATen's
numbers bit for bit, swapped in by cnnbench's build only; and the convolution weight gradients' layout."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnbench.models import build_model
from cnnbench.speed.cpu.kernels import (
    NHWC_MARGIN,
    AvgPool2x2,
    Conv2dNHWCWeightGrad,
    faster_in_nhwc,
    pool_before_relu,
    set_nhwc_weight_grads,
    time_conv_weight_grads,
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
