"""The fused CPU kernels (BatchNorm2d + sigmoid + 2x2 pool, sigmoid + pool): ATen's numbers to float
rounding, ATen's own layers wherever the kernels do not apply, and swapped in by cnnbench's build; the one-channel
convolution; the max pool (and the ReLU after it): ATen's numbers bit for bit."""

from __future__ import annotations

import copy
import itertools
import json
import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnbench.models import build_model
from cnnbench.speed.cpu import fused as fused_cpu
from cnnbench.speed.cpu.fused import (
    Absorbed,
    BatchNormSigmoidPool2d,
    MaxPool2dKernel,
    OneChannelConv2d,
    SigmoidPool2x2,
    load_library,
    max_pool_eligible,
    use_fused_kernels,
)
from cnnbench.speed.cpu.kernels import AvgPool2x2, pool_before_relu, use_fast_pooling

needs_kernels = pytest.mark.skipif(load_library() is None, reason="no C compiler or no GNU OpenMP here")
TOL = dict(rtol=1e-5, atol=1e-6)


def _pair(bn_kwargs: dict | None, channels: int, fast_pool: bool = True):
    """(ATen's layers, the same layers swapped), equal parameters; bn_kwargs None: no BatchNorm."""
    torch.manual_seed(0)
    pool = AvgPool2x2(2, 2) if fast_pool else nn.AvgPool2d(2, 2)
    layers = [nn.BatchNorm2d(channels, **bn_kwargs)] if bn_kwargs is not None else []
    ref = nn.Sequential(*layers, nn.Sigmoid(), pool)
    if bn_kwargs is not None and ref[0].affine:
        with torch.no_grad():  # not the init's ones and zeros, so that a weight or bias ignored shows
            ref[0].weight.uniform_(0.5, 1.5), ref[0].bias.uniform_(-0.5, 0.5)
    fused = copy.deepcopy(ref)
    assert use_fused_kernels(fused) == ["0"]
    return ref, fused


def _run(model: nn.Module, z: torch.Tensor, grad: torch.Tensor):
    z = z.clone().requires_grad_()
    out = model(z)
    out.backward(grad)
    params = {n: p.grad for n, p in model.named_parameters()}
    return out.detach(), z.grad, params


@needs_kernels
@pytest.mark.parametrize("shape", [(8, 6, 24, 24), (16, 16, 8, 8), (3, 2, 6, 10), (2, 1, 2, 2)])
@pytest.mark.parametrize("bn_kwargs", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
                                       None])
def test_fused_training_step_matches_aten(shape, bn_kwargs):
    """Output, input gradient, weight and bias gradients, running statistics: two steps, so that the
    running statistics' update (and momentum=None's cumulative average) is seen twice."""
    ref, fused = _pair(bn_kwargs, shape[1])
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        z = torch.randn(shape, generator=gen) * 3 + 1  # a mean and a spread the statistics must find
        grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen)
        (o1, g1, p1), (o2, g2, p2) = _run(ref, z, grad), _run(fused, z, grad)
        torch.testing.assert_close(o2, o1, **TOL)
        torch.testing.assert_close(g2, g1, **TOL)
        assert p1.keys() == p2.keys()
        for name in p1:
            torch.testing.assert_close(p2[name], p1[name], **TOL)
        ref.zero_grad(), fused.zero_grad()
    for (name, a), (_, b) in zip(ref.named_buffers(), fused.named_buffers(), strict=True):
        torch.testing.assert_close(b, a, **TOL, msg=name)
    assert [n for n, _ in ref.state_dict().items()] == [n for n, _ in fused.state_dict().items()]


def _max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| over max |expected|: an error in units of the tensor's own scale."""
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


# A channel mean far from 0 against its spread (1e5 spreads away): E[z^2] - mean^2 in float loses every
# digit of the variance there. Measured (in units of each tensor's largest entry): at most 2.5e-7 with the
# shifted sums; 0.2 to 2.4 (outputs, gradients) and 66 to 560 (running variance) with E[z^2] - mean^2.
LARGE_MEAN_REL = 1e-5


@needs_kernels
@pytest.mark.parametrize("mean", [1e3, -1e3])
@pytest.mark.parametrize("bn_kwargs", [{}, {"momentum": None}])
def test_a_large_channel_mean_against_its_spread_matches_aten_in_double(mean, bn_kwargs):
    """Inputs of mean +-1e3 and standard deviation 1e-2: output, input and parameter gradients, running
    statistics (two steps) and the evaluation output match ATen's layers computed in float64 on the same
    float32 inputs, to LARGE_MEAN_REL of each tensor's largest entry."""
    std, shape = 1e-2, (8, 6, 24, 24)
    ref, fused = _pair(bn_kwargs, shape[1])
    exact = ref.double()  # ATen's layers in float64
    with torch.no_grad():  # running statistics near the data's, so that evaluation normalizes sensibly
        for model in (exact, fused):
            model[0].running_mean.fill_(mean), model[0].running_var.fill_(std ** 2)
    gen = torch.Generator().manual_seed(3)
    errors = {}
    for step in range(2):
        z = (torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean).float()
        grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen)
        (o1, g1, p1), (o2, g2, p2) = _run(exact, z.double(), grad.double()), _run(fused, z, grad)
        errors |= {f"output {step}": _max_rel_error(o2, o1), f"input grad {step}": _max_rel_error(g2, g1)}
        errors |= {f"{name} grad {step}": _max_rel_error(p2[name], p1[name]) for name in p1}
        exact.zero_grad(), fused.zero_grad()
    for (name, a), (_, b) in zip(exact.named_buffers(), fused.named_buffers(), strict=True):
        if a.is_floating_point():
            errors[name] = _max_rel_error(b, a)
    exact.eval(), fused.eval()
    with torch.no_grad():  # evaluation on the same running statistics (float32's, a running mean within 3e-5)
        exact[0].running_mean.copy_(fused[0].running_mean), exact[0].running_var.copy_(fused[0].running_var)
        errors["evaluation output"] = _max_rel_error(fused(z), exact(z.double()))
    assert max(errors.values()) <= LARGE_MEAN_REL, ", ".join(f"{k}: {v:.1e}" for k, v in errors.items())


@needs_kernels
def test_fused_evaluation_uses_the_running_statistics():
    ref, fused = _pair({}, 6)
    z = torch.randn(8, 6, 12, 12) * 2 + 0.5
    for _ in range(3):  # running statistics away from their initial 0 and 1
        ref(z), fused(z)
    ref.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(z), ref(z), **TOL)
    for (name, a), (_, b) in zip(ref.named_buffers(), fused.named_buffers(), strict=True):
        torch.testing.assert_close(b, a, **TOL, msg=name)


@needs_kernels
def test_the_results_do_not_depend_on_the_number_of_threads():
    """Every sum runs per (image, channel) plane, then per channel in order: bit for bit the same."""
    ref, fused = _pair({}, 6)
    z, grad = torch.randn(32, 6, 24, 24), torch.randn(32, 6, 12, 12)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 3):
            torch.set_num_threads(n)
            model = copy.deepcopy(fused)
            results.append(_run(model, z, grad))
    finally:
        torch.set_num_threads(threads)
    (o1, g1, p1), (o2, g2, p2) = results
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


@needs_kernels
@pytest.mark.parametrize("case", ["odd side", "channels_last", "float64", "bfloat16", "eval with gradients"])
@pytest.mark.parametrize("fast_pool", [True, False])
def test_inputs_the_kernel_does_not_take_go_through_atens_layers_exactly(case, fast_pool, monkeypatch):
    """The fallback is the layers the swap absorbed, bit for bit (with their own pool: fast or ATen's)."""
    ref, fused = _pair({}, 4, fast_pool=fast_pool)
    z = torch.randn(4, 4, 9 if case == "odd side" else 8, 8)
    if case == "channels_last":
        z = z.contiguous(memory_format=torch.channels_last)
    if case in ("float64", "bfloat16"):
        dtype = torch.float64 if case == "float64" else torch.bfloat16
        ref.to(dtype), fused.to(dtype)
        z = z.to(dtype)
    if case == "eval with gradients":
        ref.eval(), fused.eval()

    def refuse(*args):
        raise AssertionError("the fused kernel ran")

    monkeypatch.setattr(fused_cpu._BatchNormSigmoidPool, "apply", refuse)
    pools = []
    fast_forward = AvgPool2x2.forward
    monkeypatch.setattr(AvgPool2x2, "forward", lambda self, x: (pools.append(self), fast_forward(self, x))[1])
    grad = torch.randn(ref(z).shape, dtype=z.dtype)
    (o1, g1, p1), (o2, g2, p2) = _run(ref, z, grad), _run(fused, z, grad)
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert len(pools) == (3 if fast_pool else 0)  # ref twice (shape, run), fused once: its own fast pool


# ----------------------------------------------------------------------------- allocation failures

# Sizes no malloc can give, passed to the real kernels: each returns BSP_NO_MEMORY before it reads or writes
# any tensor (the small ones below only stand in for the pointers). 2^24 x 2^24 floats per plane: 4 PiB per
# thread's buffer, over the 128 TiB address space (whatever the kernel's overcommit policy); 2^31 x 2^31:
# a byte count over 2^64, refused before malloc (its product would wrap around).
HUGE_SIDE, OVERFLOWING_SIDE = 2 ** 24, 2 ** 31


@needs_kernels
@pytest.mark.parametrize("kernel, shape", [
    ("bsp_forward", (1, 1, HUGE_SIDE, HUGE_SIDE)), ("bsp_forward", (1, 1, OVERFLOWING_SIDE, OVERFLOWING_SIDE)),
    ("bsp_backward", (1, 1, HUGE_SIDE, HUGE_SIDE)), ("bsp_backward", (HUGE_SIDE, HUGE_SIDE, 2, 2)),
    ("sp_backward", (1, 1, HUGE_SIDE, HUGE_SIDE)), ("c1_forward", (1, HUGE_SIDE, HUGE_SIDE)),
    ("c1_weight_grad", (1, HUGE_SIDE, HUGE_SIDE))])
def test_a_failed_allocation_in_a_kernel_raises_memory_error(kernel, shape):
    """The real library: its malloc fails, the kernel returns BSP_NO_MEMORY, call_kernel raises."""
    stand_in = torch.zeros(16)
    p = stand_in.data_ptr()
    args = {"bsp_forward": (p, *shape, p, p, p, p, 1),
            "bsp_backward": (p, p, *shape, p, p, p, p, p, p, p, p, p, 1),
            "sp_backward": (p, p, *shape, p, 1),
            "c1_forward": (p, *shape, p, p, 6, 5, 2, p, 1),  # (B, H, W), 6 channels, 5x5, padding 2
            "c1_weight_grad": (p, p, *shape, 6, 5, 2, p, p, 1)}[kernel]
    with pytest.raises(MemoryError, match=f"fused CPU kernel {kernel}: could not allocate"):
        fused_cpu.call_kernel(kernel, *args)
    assert torch.equal(stand_in, torch.zeros(16))  # nothing written


class _FailingLibrary:
    """A stand-in for the built library: each kernel returns 0, except ``failing`` which returns ``status``."""

    def __init__(self, failing: str, status: int):
        self.failing, self.status, self.calls = failing, status, []

    def __getattr__(self, kernel: str):
        return lambda *args: (self.calls.append(kernel), self.status if kernel == self.failing else 0)[1]


@pytest.mark.parametrize("layer, failing", [
    ("batch norm", "bsp_batch_stats"), ("batch norm", "bsp_forward"), ("batch norm", "bsp_backward"),
    ("batch norm, evaluation", "bsp_forward"), ("sigmoid", "bsp_forward"), ("sigmoid", "sp_backward"),
    ("one-channel convolution", "c1_forward"), ("one-channel convolution", "c1_weight_grad"),
    ("max pool", "maxpool_forward"), ("max pool", "maxpool_backward")])
@pytest.mark.parametrize("status, error", [(fused_cpu.STATUS_NO_MEMORY, MemoryError), (7, RuntimeError)])
def test_a_kernels_nonzero_status_raises_in_the_layer(layer, failing, status, error, monkeypatch):
    """Each call of a kernel in the fused layers (training forward and backward, evaluation) checks its
    status: a failed allocation is a MemoryError, any other nonzero status a RuntimeError, both naming the
    kernel. A stand-in library returns the status (no compiler needed)."""
    lib = _FailingLibrary(failing, status)
    monkeypatch.setattr(fused_cpu, "load_library", lambda: lib)
    evaluation = layer.endswith("evaluation")
    if layer == "one-channel convolution":  # the network's input: no gradient of its own
        fused, z = nn.Conv2d(1, 2, 3, padding=1), torch.randn(2, 1, 2, 2)
        assert use_fused_kernels(fused) == [""]
    elif layer == "max pool":
        fused, z = nn.Sequential(nn.MaxPool2d(2), nn.ReLU()), torch.randn(2, 2, 4, 4, requires_grad=True)
        assert use_fused_kernels(fused) == ["0"]
    else:
        _, fused = _pair(None if layer == "sigmoid" else {}, 2)
        z = torch.randn(2, 2, 4, 4, requires_grad=not evaluation)
    fused.train(not evaluation)

    def step():
        with torch.set_grad_enabled(not evaluation):  # evaluation: no_grad, the running statistics' map
            out = fused(z)
            if not evaluation:
                out.backward(torch.ones(2, 2, 2, 2))

    with pytest.raises(error, match=f"fused CPU kernel {failing}"):
        step()
    assert lib.calls[-1] == failing
    lib.status = 0  # the same calls with a zero status raise nothing
    step()


def _swappable():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sigmoid(), nn.AvgPool2d(2, 2),       # 1: BN + sigmoid + pool
        nn.Conv2d(4, 4, 3), nn.Sigmoid(), nn.AvgPool2d(2),                              # 5: sigmoid + pool
        nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2, 2),                               # ReLU: no
        nn.Sigmoid(), nn.MaxPool2d(2, 2),                                               # 11: the max pool
        nn.Sigmoid(), nn.AvgPool2d(3, 2),                                               # 3x3 pool: no
        nn.Sequential(nn.BatchNorm2d(4), nn.Sigmoid(), AvgPool2x2(2, 2)),               # nested: 14.0
    )


@needs_kernels
def test_only_the_patterns_inside_sequentials_are_swapped():
    model = _swappable()
    keys = list(model.state_dict())
    assert use_fused_kernels(model) == ["0", "1", "5", "11", "14.0"]  # 0: the one-channel convolution
    assert [type(m) for m in model] == [
        OneChannelConv2d, BatchNormSigmoidPool2d, Absorbed, Absorbed, nn.Conv2d, SigmoidPool2x2, Absorbed,
        nn.BatchNorm2d, nn.ReLU, nn.AvgPool2d, nn.Sigmoid, MaxPool2dKernel, nn.Sigmoid, nn.AvgPool2d,
        nn.Sequential]
    assert [type(m) for m in model[14]] == [BatchNormSigmoidPool2d, Absorbed, Absorbed]
    assert list(model.state_dict()) == keys

    class Custom(nn.Sequential):  # its own forward: the children's order says nothing about the data flow
        def forward(self, x):
            return super().forward(x)

    assert use_fused_kernels(Custom(nn.BatchNorm2d(4), nn.Sigmoid(), nn.AvgPool2d(2, 2))) == []


@needs_kernels
@pytest.mark.parametrize("name", ["lenet", "lenet_bn"])
def test_the_lenets_train_the_same_with_the_kernels(name):
    """Three SGD steps of each LeNet, fused and not, from the same weights: the same losses, and the same
    update of every parameter, to rounding (LeNet's first layers learn too slowly to show in the losses)."""
    torch.manual_seed(0)
    ref = build_model(name, in_channels=1, num_classes=10, image_size=28)
    fused = copy.deepcopy(ref)
    use_fast_pooling(ref), use_fast_pooling(fused)
    assert use_fused_kernels(fused) == (["0", "1", "5"] if name == "lenet_bn" else ["0", "1", "4"])
    start = {k: v.clone() for k, v in ref.state_dict().items()}
    gen = torch.Generator().manual_seed(2)
    data = [(torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)) for _ in range(3)]
    losses = {}
    for key, model in (("aten", ref), ("fused", fused)):
        opt = torch.optim.SGD(model.parameters(), lr=0.9)
        losses[key] = []
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(), loss.backward(), opt.step()
            losses[key].append(loss.item())
    assert losses["fused"] == pytest.approx(losses["aten"], rel=1e-5)
    assert losses["aten"][0] != losses["aten"][-1]  # the steps moved the weights
    # Each parameter's own update, to 1e-4 of its largest entry; 1e-6 absolute for the convolution biases
    # before a BatchNorm, whose true gradient is 0 (their updates are rounding, ~1e-7).
    for key, w0 in start.items():
        moved_ref, moved_fused = ref.state_dict()[key] - w0, fused.state_dict()[key] - w0
        if w0.is_floating_point():
            assert (moved_fused - moved_ref).abs().max() <= 1e-4 * moved_ref.abs().max() + 1e-6, key


def test_the_run_uses_them_on_the_cpu_and_the_switch_turns_them_off(fake_data, tmp_path):
    """Fused by default (on a machine with a C compiler), ATen's layers with device.fused_kernels=false;
    the first logged losses agree to float rounding."""
    from cnnbench.run.train import train
    from tests.helpers import built, compose_fast

    common = ("model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=1", "trainer.limit_train_batches=4",
              "trainer.logs_per_epoch=4", "trainer.limit_eval_batches=1", "trainer.checkpoint=false")
    expected = ["0", "1", "5"] if load_library() is not None else []
    losses = {}
    for on in (True, False):
        cfg = compose_fast(fake_data, *common, f"device.fused_kernels={str(on).lower()}")
        types = {type(m) for m in built(cfg, tmp_path / f"b{on}").model.modules()}
        assert (BatchNormSigmoidPool2d in types) is (on and bool(expected))
        summary = train(cfg, tmp_path / str(on))
        assert summary["status"] == "completed", summary["error"]
        assert summary["speed"]["fused_kernels"] == (expected if on else [])
        lines = (tmp_path / str(on) / "metrics.jsonl").read_text().splitlines()
        losses[on] = [json.loads(line)["train/loss"] for line in lines if '"kind": "train"' in line]
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


# ----------------------------------------------------------------------------- the one-channel convolution

def _conv_pair(out_channels: int, kernel: int, padding: int, bias: bool = True):
    """(ATen's nn.Conv2d of one input channel, the same swapped), equal parameters."""
    torch.manual_seed(0)
    ref = nn.Conv2d(1, out_channels, kernel, padding=padding, bias=bias)
    fused = copy.deepcopy(ref)
    assert use_fused_kernels(fused) == [""] and type(fused) is OneChannelConv2d
    return ref, fused


@needs_kernels
@pytest.mark.parametrize("out_channels, kernel, padding, shape", [
    (6, 5, 2, (13, 28, 28)),   # LeNet's first layer; 13 images: not a multiple of the 8-image blocks
    (6, 5, 0, (8, 28, 28)),    # LeNet-BN's
    (8, 3, 1, (3, 17, 40)),    # channels past one block of 6, a wide image (3 vectors a row, the last part-used)
    (4, 7, 3, (2, 33, 9)),     # the largest kernel, fewer channels than a block
    (1, 1, 0, (1, 5, 5)),
])
@pytest.mark.parametrize("bias", [True, False])
def test_the_one_channel_convolution_matches_aten(out_channels, kernel, padding, shape, bias):
    """Output, weight gradient and bias gradient as ATen's to float rounding (the same sums in another order)."""
    ref, fused = _conv_pair(out_channels, kernel, padding, bias)
    x = torch.randn(shape[0], 1, *shape[1:])
    out_ref, out = ref(x), fused(x)
    torch.testing.assert_close(out, out_ref, **TOL)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad), out.backward(grad)
    torch.testing.assert_close(fused.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5 * ref.weight.grad.abs().max())
    if bias:
        torch.testing.assert_close(fused.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5 * ref.bias.grad.abs().max())


@needs_kernels
def test_the_one_channel_weight_gradient_does_not_depend_on_the_number_of_threads():
    _, fused = _conv_pair(6, 5, 2)
    x = torch.randn(37, 1, 28, 28)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            fused.weight.grad = fused.bias.grad = None
            fused(x).square().sum().backward()
            grads.append((fused.weight.grad.clone(), fused.bias.grad.clone()))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g[0], grads[0][0]) and torch.equal(g[1], grads[0][1]) for g in grads)


@needs_kernels
@pytest.mark.parametrize("case", ["input needs a gradient", "float64", "bfloat16", "autocast", "channels_last"])
def test_inputs_the_one_channel_kernel_does_not_take_go_through_aten_exactly(case):
    ref, fused = _conv_pair(6, 5, 2)
    x = torch.randn(4, 1, 12, 12)
    if case == "input needs a gradient":
        x.requires_grad_(True)
    elif case == "channels_last":  # the run's layout: ATen's output keeps it for the layers after
        ref, fused = ref.to(memory_format=torch.channels_last), fused.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        assert fused(x).is_contiguous(memory_format=torch.channels_last) and not fused(x).is_contiguous()
    elif case != "autocast":
        dtype = {"float64": torch.float64, "bfloat16": torch.bfloat16}[case]
        ref, fused, x = ref.to(dtype), fused.to(dtype), x.to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):  # bf16 as the run asked
        assert torch.equal(fused(x), ref(x))
    if case == "input needs a gradient":
        fused(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 6, 5), nn.Conv2d(1, 6, 5, stride=2), nn.Conv2d(1, 6, 5, dilation=2), nn.Conv2d(1, 6, (3, 5)),
    nn.Conv2d(1, 6, 9), nn.Conv2d(1, 6, 5, padding=(1, 2)), nn.Conv2d(1, 6, 5, padding="same"),
    nn.Conv2d(1, 6, 5, padding=2, padding_mode="reflect")], ids=str)
def test_convolutions_the_one_channel_kernel_does_not_compute_are_left_alone(conv):
    assert not fused_cpu.one_channel_eligible(conv)
    assert fused_cpu.one_channel_eligible(nn.Conv2d(1, 6, 5, padding=2))


# ----------------------------------------------------------------------------- building and loading

@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache folder and no library loaded yet in this process (restored afterwards)."""
    monkeypatch.setenv(fused_cpu.CACHE_ENV, str(tmp_path / "kernels"))
    load_library.cache_clear()
    yield tmp_path / "kernels"
    load_library.cache_clear()


@needs_kernels
def test_built_once_then_loaded_from_the_cache(fresh_cache, monkeypatch):
    calls = []
    build = fused_cpu.build_library
    monkeypatch.setattr(fused_cpu, "build_library", lambda *a: (calls.append(a), build(*a)))
    assert load_library() is not None
    assert len(calls) == 1 and calls[0][1].parent == fresh_cache and calls[0][1].exists()
    assert [p.name for p in fresh_cache.iterdir()] == [calls[0][1].name]  # no temporary file left
    load_library.cache_clear()
    assert load_library() is not None
    assert len(calls) == 1  # the second process (here: a cleared cache) builds nothing


@needs_kernels
def test_the_library_shares_torchs_openmp_runtime(fresh_cache, monkeypatch, caplog):
    """One libgomp in the process once the library is loaded: its loops run on torch's threads. Where a
    second runtime shows up (torch's libgomp under another file name), the kernels stay off."""
    assert load_library() is not None
    runtimes = fused_cpu.openmp_runtimes()
    assert len(runtimes) == 1 and "libgomp" in next(iter(runtimes))
    load_library.cache_clear()
    monkeypatch.setattr(fused_cpu, "openmp_runtimes", lambda: {"/torch/lib/libgomp-a34b3233.so.1", "/lib/libgomp.so.1"})
    with caplog.at_level("WARNING", logger="cnnbench.speed.cpu.fused"):
        assert load_library() is None
    assert "two OpenMP runtimes" in caplog.text


@pytest.mark.parametrize("why", ["no compiler", "the build fails"])
def test_without_a_working_compiler_nothing_is_swapped(why, fresh_cache, monkeypatch, caplog):
    if why == "no compiler":
        monkeypatch.setattr(fused_cpu, "_compiler", lambda: None)
    else:
        monkeypatch.setenv("CC", "false")  # exits 1: a compiler that fails
        monkeypatch.setattr(fused_cpu, "_compiler", lambda: "false")
        monkeypatch.setattr(fused_cpu, "library_path", lambda c: fresh_cache / "x.so")
    monkeypatch.setattr(fused_cpu, "_torch_uses_gnu_openmp", lambda: True)
    model = _swappable()
    with caplog.at_level("INFO", logger="cnnbench.speed.cpu.fused"):
        assert use_fused_kernels(model) == []
    assert "fused CPU kernels: off" in caplog.text
    assert ("off (no C compiler: set CC" in caplog.text) is (why == "no compiler")  # why it is off, said
    assert type(model[1]) is nn.BatchNorm2d and type(model[2]) is nn.Sigmoid and type(model[3]) is nn.AvgPool2d
    left = sorted(p.name for p in fresh_cache.iterdir()) if fresh_cache.exists() else []
    assert left == ([] if why == "no compiler" else ["x.failed"])  # no library, no temporary file: the marker


def test_the_switch_takes_only_true_or_false(fake_data):
    """The schema types it as a boolean: ``auto`` is refused when the config is composed, naming the key."""
    from hydra.errors import ConfigCompositionException

    from cnnbench.run.validate import validate_config
    from cnnbench.schema import type_error_sentence
    from tests.helpers import compose_fast

    validate_config(compose_fast(fake_data, "device.fused_kernels=false"))
    with pytest.raises(ConfigCompositionException) as refused:
        compose_fast(fake_data, "device.fused_kernels=auto")
    assert type_error_sentence(refused.value) == "device.fused_kernels must be true or false, got auto"


def test_not_with_another_openmp_runtime_than_gnus(fresh_cache, monkeypatch, caplog):
    """A torch on Intel's or LLVM's OpenMP: the library (linked to libgomp) would bring a second pool."""
    monkeypatch.setattr(fused_cpu, "openmp_runtimes", lambda: {"/opt/torch/lib/libiomp5.so"})
    with caplog.at_level("INFO", logger="cnnbench.speed.cpu.fused"):
        assert load_library() is None
    assert "does not use GNU OpenMP" in caplog.text


X86_NATIVE = ["-march=native", "-mprefer-vector-width=512"]


@pytest.mark.parametrize("machine, native", [
    ("x86_64", X86_NATIVE), ("AMD64", X86_NATIVE), ("aarch64", ["-mcpu=native"]), ("arm64", ["-mcpu=native"]),
    ("riscv64", []), ("ppc64le", [])])
def test_the_compiler_flags_follow_the_architecture(machine, native, monkeypatch):
    """-mprefer-vector-width=512 only on x86 (an aarch64 gcc rejects it), -mcpu=native on ARM; the common
    flags everywhere, and the library's name changes with them."""
    host_machine, host_path = platform.machine(), fused_cpu.library_path("true")  # `true`: a stand-in compiler
    monkeypatch.setattr(fused_cpu.platform, "machine", lambda: machine)
    flags = fused_cpu.compiler_flags()
    assert flags == ["-O3", *native, *fused_cpu.COMMON_FLAGS]
    assert "-fopenmp" in flags and "-shared" in flags
    assert (fused_cpu.library_path("true") == host_path) is (machine == host_machine)


def _fake_compiler(folder: Path, log: Path, exit_code: int = 1) -> str:
    """A C compiler that appends its arguments to ``log`` and exits ``exit_code`` with an error message."""
    script = folder / "fake-cc"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "fake-cc: error: unrecognized option" >&2\n'
                      f"exit {exit_code}\n")
    script.chmod(0o755)
    return str(script)


def test_a_failed_build_is_remembered_and_not_retried(fresh_cache, tmp_path, monkeypatch, caplog):
    """A compiler that fails: one build, its error kept in a .failed file named by the same hash; the next
    process (here: a cleared cache) logs it and does not run the compiler again; a changed source (a new
    hash) is built afresh."""
    log = tmp_path / "compiler-calls"
    monkeypatch.setenv("CC", _fake_compiler(tmp_path, log))
    monkeypatch.setattr(fused_cpu, "_torch_uses_gnu_openmp", lambda: True)

    def builds() -> int:  # the compiler's runs that build (its --version runs compute the hash)
        return sum("-o" in line.split() for line in log.read_text().splitlines())

    with caplog.at_level("INFO", logger="cnnbench.speed.cpu.fused"):
        assert load_library() is None
    assert builds() == 1 and "the build failed: fake-cc: error: unrecognized option" in caplog.text
    (marker,) = fresh_cache.iterdir()
    assert marker.name.endswith(".failed") and "unrecognized option" in marker.read_text()
    assert marker == fused_cpu.failure_marker(fused_cpu.library_path(fused_cpu._compiler()))
    caplog.clear()
    load_library.cache_clear()
    with caplog.at_level("INFO", logger="cnnbench.speed.cpu.fused"):
        assert load_library() is None
    assert builds() == 1  # not retried
    assert "build failed before: fake-cc: error: unrecognized option" in caplog.text and str(marker) in caplog.text
    assert "building" not in caplog.text
    source = tmp_path / "fused_cpu.c"
    source.write_text(fused_cpu.SOURCE.read_text() + "/* changed */\n")
    monkeypatch.setattr(fused_cpu, "SOURCE", source)
    load_library.cache_clear()
    assert load_library() is None
    assert builds() == 2 and len(list(fresh_cache.glob("*.failed"))) == 2  # a new hash: built again


@pytest.mark.parametrize("arch", ["x86", "aarch64"])
def test_the_cache_key_reads_the_cpus_features(arch, tmp_path, monkeypatch):
    """/proc/cpuinfo's feature list, x86's ``flags`` line or aarch64's ``Features`` line, is part of the
    library's name: another feature, another library."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(fused_cpu, "CPUINFO", cpuinfo)
    line = {"x86": "flags\t\t: fpu sse2 avx2", "aarch64": "Features\t: fp asimd evtstrm"}[arch]
    other = {"x86": "BogoMIPS\t: 4000.00", "aarch64": "BogoMIPS\t: 50.00\nCPU implementer\t: 0x41"}[arch]
    names = []
    for extra in ("", " sve2", " avx512f"):
        cpuinfo.write_text(f"processor\t: 0\n{other}\n{line}{extra}\n\nprocessor\t: 1\n{line}\n")
        assert fused_cpu._cpu_features() == line + extra  # the first CPU's line
        names.append(fused_cpu.library_path("true").name)
    assert len(set(names)) == 3


# ----------------------------------------------------------------------------- the max pool

# (kernel, stride, padding): VGG's 2x2 (windows that tile the image), AlexNet/NiN's 3x3/2, GoogLeNet/ResNet's
# 3x3/2 padded, the Inception branch's 3x3/1, overlapping 2x2/1, and a rectangular one
MAX_POOL_GEOMETRIES = [(2, 2, 0), (3, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), ((2, 3), (1, 2), (1, 0))]
# channels: one 16-lane vector, fewer (the scalar tail), vectors and a tail
MAX_POOL_SHAPES = [(3, 16, 12, 10), (2, 5, 9, 11), (2, 40, 7, 8)]


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to the last bit, NaN where the other has NaN."""
    return a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _max_pool_input(shape, dtype, channels_last: bool) -> torch.Tensor:
    """Integers (ties in every window), -inf, NaN and zeros of both signs (the ReLU's edge)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2).round()
    x[0, 0, 0, :3] = float("nan")
    x[0, -1, 1, 1:4] = float("-inf")
    x[-1, 0, 2, :] = -0.0
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@needs_kernels
@pytest.mark.parametrize("geometry", MAX_POOL_GEOMETRIES)
@pytest.mark.parametrize("shape", MAX_POOL_SHAPES)
@pytest.mark.parametrize("dtype, channels_last",
                         list(itertools.product((torch.float32, torch.bfloat16), (False, True))))
@pytest.mark.parametrize("relu", [False, True])
def test_the_kernel_matches_atens_pool_and_relu_bit_for_bit(geometry, shape, dtype, channels_last, relu):
    """Output, its layout and the input gradient equal ATen's max_pool2d (then relu): the first maximum of a
    window, NaN taken, gradients added in ATen's order (bf16 rounded after each addition)."""
    kernel, stride, padding = geometry
    x = _max_pool_input(shape, dtype, channels_last)
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
    assert _same_bits(out, ref)
    assert out.stride() == ref.stride()
    assert _same_bits(in_.grad, ref_in.grad)
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
