"""Faster CPU versions of layers whose ATen kernels dominate the small networks' steps.

Average pooling
---------------
2x2 average pooling with stride 2 (LeNet's two pools, DenseNet's transitions): ATen's CPU kernel takes
2.2 ms forward and about 6 ms backward for LeNet's first pool (256 x 6 x 28 x 28, one thread) -- a
quarter of the whole training step. As four strided adds forward and four strided copies backward it
takes 0.5 ms and 0.5 ms, with the same result bit for bit (the same additions in the same order, and a
multiplication by 0.25 is exactly a division by 4).

``use_fast_pooling(model)`` swaps every eligible ``nn.AvgPool2d`` in place for :class:`AvgPool2x2`
(no parameters or buffers, so state dicts and checkpoints are unchanged). cnnbench's build does it on
the CPU (``device.fast_pooling``); the book's pipeline (``cnnbench.book.pipeline``) keeps ATen's kernel.

Convolution weight gradients
----------------------------
A convolution's backward pass computes two things, the input gradient and the weight (and bias)
gradient, and oneDNN's fastest layout is not the same for both. On LeNet-BN's second convolution
(6 -> 16 channels, 5x5, 12x12 inputs, batch 256, 2 cores) ATen's backward on NCHW tensors takes 1.7-1.9 ms,
of which the weight gradient 0.9-1.0 ms; the same weight gradient from channels-last copies of the input
and the output gradient takes 0.5-0.6 ms, conversions included, while the input gradient is fastest in
NCHW (0.7-0.9 ms; 1.2-1.4 ms in channels-last). For most other layers channels-last is the slower way
(the first convolutions, with 1 or 3 input channels: 1.7-3x slower; 3x3 and 5x5 convolutions with 64-192
channels: 1.0-1.4x).

:class:`Conv2dNHWCWeightGrad` is an ``nn.Conv2d`` whose backward takes the input gradient as ATen
computes it and the weight gradient from channels-last copies. Which layers get it is measured, not
guessed: :func:`time_conv_weight_grads` times each convolution's weight gradient both ways on the run's
own shapes, and :func:`set_nhwc_weight_grads` swaps the layers where channels-last is clearly faster
(cnnbench's build does it on the CPU for small networks: ``device.conv_weight_grad``). The weights are the same objects
(the swap changes the module's class), so optimizers, state dicts and checkpoints are unchanged; the
weight gradient differs from ATen's only in the order of its sums (float rounding).

Weight gradients as one GEMM
----------------------------
In the bigger networks (bf16, channels-last) oneDNN's weight gradient is slow where the picture is small and
the channels many: ResNet-18's last stage at 96 px (3 x 3 pixels, 512 -> 512 channels, batch 256) takes about
155 ms for it against 20-45 ms for the forward or the input gradient. :class:`Conv2dGemmWeightGrad` computes it
as one matrix product of the output gradient, (B*Ho*Wo, O), and the input's patches, (B*Ho*Wo, kh*kw*C),
gathered in channels-last order: 22 ms there, 40 against 60 ms at 6 x 6 pixels and 256 channels, but slower
at 12 x 12 and beyond (the patches grow with the picture). So it is timed, per layer, at start-up in the run's
precision and layout, the layer's whole backward both ways (:func:`time_gemm_weight_grads`, 3 alternating
rounds, medians; a layer whose first GEMM backward takes over twice ATen's is timed no further). The whole
backward, because the input gradient alone costs more than its share of ATen's single call in some layers:
timing the weight gradients alone chose layers that made NiN's step 13% slower. The layers where it takes at
most 0.85 of ATen's time get it (``device.conv_weight_grad=auto``, networks of 50 MFLOP per image and more;
the small ones time the channels-last copies above). Its input gradient is ATen's; its bias gradient is summed
apart (asked for the bias gradient, oneDNN's backward computes the weight gradient too). The weight and bias
gradients differ from ATen's in the order of their sums (float rounding).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

FAST_DTYPES = (torch.float32, torch.float64)  # bf16/fp16 inputs keep ATen's kernel (it accumulates in fp32)


def memory_layout(x: torch.Tensor) -> torch.memory_format:
    """channels-last for a tensor stored (B, H, W, C) and not also NCHW-contiguous; else the NCHW format."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class _AvgPool2x2(torch.autograd.Function):
    """(B, C, H, W) -> (B, C, H // 2, W // 2): the mean of each 2x2 block (a trailing odd row/column is
    dropped, as ``nn.AvgPool2d(2, 2)`` drops it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        ctx.shape, ctx.layout = x.shape, memory_layout(x)
        x = x[..., :h, :w]
        out = x[..., 0::2, 0::2] + x[..., 0::2, 1::2]
        return out.add_(x[..., 1::2, 0::2]).add_(x[..., 1::2, 1::2]).mul_(0.25)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        shape = ctx.shape
        h, w = shape[-2] // 2 * 2, shape[-1] // 2 * 2
        odd = (h, w) != tuple(shape[-2:])
        out = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout)
        if odd:
            out.zero_()  # a dropped row/column gets no gradient
        quarter = grad * 0.25
        for i in (0, 1):
            for j in (0, 1):
                out[..., i:h:2, j:w:2] = quarter
        return out


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` with the fast kernel for 4-d float32/float64 inputs; ATen's otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.dtype in FAST_DTYPES:
            return _AvgPool2x2.apply(x)
        return super().forward(x)


def as_pair(v) -> tuple[int, int]:
    """A pooling or convolution size as (height, width): an int stands for both."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def pool_eligible(m: nn.Module) -> bool:
    if type(m) is not nn.AvgPool2d:
        return False
    stride = m.stride if m.stride is not None else m.kernel_size
    return (as_pair(m.kernel_size) == (2, 2) and as_pair(stride) == (2, 2)
            and as_pair(m.padding) == (0, 0) and not m.ceil_mode and m.divisor_override is None)


def use_fast_pooling(model: nn.Module) -> int:
    """Replace every 2x2/stride-2 ``nn.AvgPool2d`` in ``model`` by :class:`AvgPool2x2`; returns how many."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if pool_eligible(child):
                fast = AvgPool2x2(2, 2)
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped += 1
    return swapped


def _reorderable(first: nn.Module, second: nn.Module) -> bool:
    """A ``nn.ReLU`` followed by a ``nn.MaxPool2d`` that returns no indices: the two commute exactly."""
    return type(first) is nn.ReLU and type(second) is nn.MaxPool2d and not second.return_indices


def pool_before_relu(model: nn.Module) -> int:
    """In every plain ``nn.Sequential`` of ``model``, put each max pool that follows a ReLU before it; returns
    how many pairs were swapped.

    Max pooling and ReLU commute exactly (ReLU is monotone: the largest of the rectified values is the
    rectified largest; -inf padding and NaN alike), and so do their gradients (each window's gradient goes to
    the same first maximum, times ReLU's 0 or 1 there). Pooled first, the ReLU and its backward pass run over a
    quarter of the values (2x2 and 3x3/stride-2 pools): in VGG-11 at 224 pixels (bf16, channels-last, 2
    threads) they were 13% of an eager training step over the first stage's 128 x 16 x 224 x 224 tensors.
    The pair's modules trade places (neither holds parameters or buffers: state dicts keep their keys).
    """
    swapped = 0
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
            continue
        names = list(parent._modules)
        i = 0
        while i + 1 < len(names):
            first, second = parent._modules[names[i]], parent._modules[names[i + 1]]
            if _reorderable(first, second):
                parent._modules[names[i]], parent._modules[names[i + 1]] = second, first
                swapped += 1
                i += 2
            else:
                i += 1
    return swapped


# ----------------------------------------------------------------------------- convolution weight gradients

NHWC_MARGIN = 0.85  # swap a layer when its channels-last weight gradient takes at most this share of ATen's
MAX_TUNED_CALL_S = 0.02  # a layer whose weight gradient takes longer than this is not timed (nor swapped)
TUNING_REPEATS = 5  # timed calls of each way, alternating; the medians are compared


def _conv_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, conv: tuple, has_bias: bool,
                   mask: tuple[bool, bool, bool]):
    """ATen's convolution backward for the parts in ``mask`` (input, weight, bias)."""
    stride, padding, dilation, groups = conv
    bias_sizes = [weight.shape[0]] if has_bias else None
    return torch.ops.aten.convolution_backward(grad, x, weight, bias_sizes, stride, padding, dilation,
                                               False, [0, 0], groups, mask)


def _nhwc_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, conv: tuple, has_bias: bool):
    """(weight gradient, bias gradient or None) computed from channels-last copies of ``grad`` (B, O, H', W')
    and ``x`` (B, C, H, W); the weight gradient comes back in ``weight``'s own layout."""
    cl = torch.channels_last
    _, grad_w, grad_b = _conv_backward(grad.contiguous(memory_format=cl), x.contiguous(memory_format=cl), weight,
                                       conv, has_bias, (False, True, has_bias))
    return grad_w.contiguous(), grad_b


class _Conv2dNHWCWeightGrad(torch.autograd.Function):
    """conv2d forward as ATen does it; backward: input gradient by ATen on the NCHW tensors, weight and
    bias gradients from channels-last copies."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()  # (B, O, H', W')
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv_backward(grad, x, weight, ctx.conv, ctx.has_bias, (True, False, False))[0]
        grad_w, grad_b = _nhwc_weight_grad(grad, x, weight, ctx.conv, ctx.has_bias)
        return grad_x, grad_w, grad_b, None, None, None, None


class Conv2dNHWCWeightGrad(nn.Conv2d):
    """``nn.Conv2d`` whose weight gradient is computed from channels-last copies when it trains on NCHW
    float32/float64 input; ATen's path for anything else (channels-last input, autocast, no gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_nhwc_weight_grad(x):
            return _Conv2dNHWCWeightGrad.apply(x, self.weight, self.bias, self.stride, self.padding,
                                               self.dilation, self.groups)
        return super().forward(x)

    def _uses_nhwc_weight_grad(self, x: torch.Tensor) -> bool:
        return (torch.is_grad_enabled() and self.weight.requires_grad and x.dim() == 4
                and x.dtype in FAST_DTYPES and x.is_contiguous() and self.weight.is_contiguous()
                and not torch.is_autocast_enabled(x.device.type))


def _tunable(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)
            and m.weight.requires_grad)


def _conv_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[nn.Conv2d, torch.Size, torch.Size]]:
    """name -> (layer, input shape, output shape) of every tunable convolution, for ``example`` (B, C, H, W)."""
    seen: dict[str, tuple[nn.Conv2d, torch.Size, torch.Size]] = {}

    def record(name: str):
        def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            seen.setdefault(name, (m, inputs[0].shape, out.shape))
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if _tunable(m)]
    was_training = model.training
    try:
        model.eval()  # shapes only: BatchNorm's running statistics stay untouched
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def _time_call(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _weight_grad_ratio(conv: nn.Conv2d, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> float | None:
    """Median time of the channels-last weight gradient over ATen's on NCHW tensors of these shapes (random
    values: the time does not depend on them); None when one ATen call takes over MAX_TUNED_CALL_S."""
    gen = torch.Generator().manual_seed(0)  # its own generator: the run's random numbers stay as they are
    x = torch.randn(x_shape, generator=gen)  # (B, C, H, W)
    grad = torch.randn(out_shape, generator=gen)  # (B, O, H', W')
    weight, has_bias = conv.weight.detach(), conv.bias is not None
    geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)

    def aten() -> None:
        _conv_backward(grad, x, weight, geometry, has_bias, (False, True, has_bias))

    def nhwc() -> None:
        _nhwc_weight_grad(grad, x, weight, geometry, has_bias)

    if _time_call(aten) > MAX_TUNED_CALL_S:  # the first call also warms oneDNN's primitive cache
        return None
    nhwc()
    aten_s, nhwc_s = [], []
    for _ in range(TUNING_REPEATS):  # alternating, so a slow moment of the machine hits both
        aten_s.append(_time_call(aten))
        nhwc_s.append(_time_call(nhwc))
    return statistics.median(nhwc_s) / statistics.median(aten_s)


def time_conv_weight_grads(model: nn.Module, example: torch.Tensor, batch_size: int) -> dict[str, float]:
    """{layer name: channels-last time / ATen time} of every tunable ``nn.Conv2d`` weight gradient in
    ``model``, timed at ``batch_size`` examples shaped like ``example`` ((B, C, H, W) on the CPU; only its
    first two images go through the model, to learn each layer's shapes). Layers too slow to time are left out."""
    ratios: dict[str, float] = {}
    for name, (conv, x_shape, out_shape) in _conv_inputs(model, example[:2]).items():
        ratio = _weight_grad_ratio(conv, (batch_size, *x_shape[1:]), (batch_size, *out_shape[1:]))
        if ratio is not None:
            ratios[name] = ratio
    return ratios


def faster_in_nhwc(ratios: dict[str, float]) -> list[str]:
    """The layers of :func:`time_conv_weight_grads`'s result whose channels-last weight gradient is clearly
    faster (at most NHWC_MARGIN of ATen's time)."""
    return [name for name, ratio in ratios.items() if ratio <= NHWC_MARGIN]


def set_nhwc_weight_grads(model: nn.Module, names: list[str]) -> list[str]:
    """Make exactly the convolutions ``names`` of ``model`` :class:`Conv2dNHWCWeightGrad` (in place: the
    same objects, parameters and hooks, another backward) and any other one a plain ``nn.Conv2d`` again;
    returns the names swapped."""
    return _swap_convs(model, names, Conv2dNHWCWeightGrad, _tunable)


def _swap_convs(model: nn.Module, names: list[str], cls: type, eligible) -> list[str]:
    """Give exactly the ``eligible`` convolutions ``names`` the class ``cls``, any other of that class back
    ``nn.Conv2d``'s; the names that have ``cls`` after."""
    wanted, swapped = set(names), []
    for name, m in model.named_modules():
        if name in wanted and eligible(m):
            m.__class__ = cls
        elif name not in wanted and type(m) is cls:
            m.__class__ = nn.Conv2d
        if type(m) is cls:
            swapped.append(name)
    return swapped


# ----------------------------------------------------------------------------- weight gradients as one GEMM

GEMM_MARGIN = 0.85  # use the GEMM weight gradient where it takes at most this share of ATen's time
GEMM_ROUNDS = 3  # timed calls of each way, alternating; the medians are compared
GEMM_GIVE_UP = 2.0  # a first GEMM call this many times ATen's: the layer is not timed further


def gemm_eligible(m: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` whose weight gradient :func:`gemm_weight_grad` computes: one group, no dilation,
    numeric zero padding, a weight that trains."""
    return (type(m) is nn.Conv2d and m.groups == 1 and m.dilation == (1, 1) and m.padding_mode == "zeros"
            and not isinstance(m.padding, str) and m.weight.requires_grad)


def gemm_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                     padding: tuple[int, int]) -> torch.Tensor:
    """A convolution's weight gradient (O, C, kh, kw) as one matrix product: the output gradient as a
    (B*Ho*Wo, O) matrix (a view of a channels-last tensor) against the input's patches as (B*Ho*Wo, kh*kw*C),
    gathered from the input in (B, H, W, C) order; returned in ``weight``'s memory format. oneDNN's bf16
    weight gradient of a 3x3 convolution at 3x3 pixels (ResNet-18's last stage at 96 px: 512 -> 512 channels,
    batch 256) runs at a seventh of its forward's speed; as one GEMM it takes 22 ms against 155 ms (2-core
    Xeon with AMX). Where the spatial side is large and the channels few it is slower: timed per layer."""
    n, c = x.shape[:2]
    o, _, kh, kw = weight.shape
    ho, wo = grad.shape[-2:]
    (sh, sw), (ph, pw) = stride, padding
    xn = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view of a channels-last x
    if ph or pw:
        xn = nn.functional.pad(xn, (0, 0, pw, pw, ph, ph))
    cols = x.new_empty(n, ho, wo, kh, kw, c)  # (B, Ho, Wo, kh, kw, C)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j] = xn[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
    g = grad.permute(0, 2, 3, 1).reshape(n * ho * wo, o)  # (B*Ho*Wo, O)
    dw = (g.t() @ cols.view(n * ho * wo, kh * kw * c)).view(o, kh, kw, c).permute(0, 3, 1, 2)  # (O, C, kh, kw)
    return dw.contiguous(memory_format=memory_layout(weight))


class _Conv2dGemmWeightGrad(torch.autograd.Function):
    """conv2d as ATen computes it; backward: the input and bias gradients by ATen, the weight gradient as one
    GEMM. Under autocast the inputs are cast as autocast casts a convolution's (``custom_fwd``)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.has_bias = (stride, padding), bias is not None
        return nn.functional.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        return (*_gemm_backward(grad, x, weight, *ctx.geometry, needs[:3], ctx.has_bias), None, None)


def _gemm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride, padding,
                   needs: tuple[bool, bool, bool], has_bias: bool) -> tuple:
    """(input, weight, bias) gradients of a convolution, each where ``needs`` asks: the input's by ATen, the
    weight's as one GEMM, the bias's summed apart."""
    grad = grad.contiguous(memory_format=memory_layout(x))  # (B, O, Ho, Wo)
    grad_x = grad_b = None
    if needs[0]:
        grad_x = _conv_backward(grad, x, weight, (stride, padding, (1, 1), 1), False, (True, False, False))[0]
    grad_w = gemm_weight_grad(grad, x, weight, stride, padding) if needs[1] else None
    if has_bias and needs[2]:
        # summed in float, rounded once, as oneDNN does; not by ATen's backward: asked for the bias gradient,
        # oneDNN's computes the weight gradient too (190 ms against 42 ms for the input gradient alone at
        # 512 channels, 3x3 pixels, batch 256, bf16)
        grad_b = grad.float().sum((0, 2, 3)).to(grad.dtype)  # (O,)
    return grad_x, grad_w, grad_b


class Conv2dGemmWeightGrad(nn.Conv2d):
    """``nn.Conv2d`` whose weight gradient is one GEMM (:func:`gemm_weight_grad`) when it trains on the CPU;
    ATen's path otherwise (no gradient, another device, torch.compile)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and self.weight.requires_grad and x.dim() == 4 and x.device.type == "cpu"
                and not torch.compiler.is_compiling()):
            return _Conv2dGemmWeightGrad.apply(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)


def _gemm_ratio(conv: nn.Conv2d, x_shape: tuple[int, ...], out_shape: tuple[int, ...], dtype: torch.dtype,
                layout: torch.memory_format) -> float | None:
    """Median time of the layer's whole backward with the GEMM weight gradient over ATen's (input, weight and
    bias gradients: the separate input gradient costs more than its share of ATen's single call in some layers)
    at these shapes, dtype and layout (random values); None where the first GEMM backward takes over
    GEMM_GIVE_UP times ATen's."""
    gen = torch.Generator().manual_seed(0)  # its own generator: the run's random numbers stay as they are
    x = torch.randn(x_shape, generator=gen).to(dtype).contiguous(memory_format=layout)  # (B, C, H, W)
    grad = torch.randn(out_shape, generator=gen).to(dtype).contiguous(memory_format=layout)  # (B, O, Ho, Wo)
    weight = conv.weight.detach().to(dtype).contiguous(memory_format=layout)
    has_bias = conv.bias is not None
    needs = (True, True, has_bias)  # the first layer's input (the data) needs none: timed as if, on both sides

    def aten() -> None:
        _conv_backward(grad, x, weight, (conv.stride, conv.padding, (1, 1), 1), has_bias, needs)

    def gemm() -> None:
        _gemm_backward(grad, x, weight, conv.stride, conv.padding, needs, has_bias)

    aten()  # warms oneDNN's primitive cache
    if _time_call(gemm) > GEMM_GIVE_UP * _time_call(aten):
        return None
    aten_s, gemm_s = [], []
    for _ in range(GEMM_ROUNDS):  # alternating, so a slow moment of the machine hits both
        aten_s.append(_time_call(aten))
        gemm_s.append(_time_call(gemm))
    return statistics.median(gemm_s) / statistics.median(aten_s)


def time_gemm_weight_grads(model: nn.Module, example: torch.Tensor, batch_size: int, dtype: torch.dtype,
                           channels_last: bool) -> dict[str, float]:
    """{layer name: GEMM backward time / ATen's} of every eligible convolution in ``model`` (:func:`_gemm_ratio`) at
    ``batch_size`` examples shaped like ``example`` ((B, C, H, W); two of its images learn each layer's shapes),
    in ``dtype`` and the layout the run trains in. Layers whose GEMM is far slower are left out."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    ratios: dict[str, float] = {}
    for name, (conv, x_shape, out_shape) in _conv_inputs(model, example[:2]).items():
        if gemm_eligible(conv):
            ratio = _gemm_ratio(conv, (batch_size, *x_shape[1:]), (batch_size, *out_shape[1:]), dtype, layout)
            if ratio is not None:
                ratios[name] = ratio
    return ratios


def faster_as_gemm(ratios: dict[str, float]) -> list[str]:
    """The layers of :func:`time_gemm_weight_grads`'s result whose GEMM weight gradient is clearly faster."""
    return [name for name, ratio in ratios.items() if ratio <= GEMM_MARGIN]


def set_gemm_weight_grads(model: nn.Module, names: list[str]) -> list[str]:
    """Make exactly the convolutions ``names`` of ``model`` :class:`Conv2dGemmWeightGrad` (in place) and any
    other one a plain ``nn.Conv2d`` again; returns the names swapped."""
    return _swap_convs(model, names, Conv2dGemmWeightGrad, gemm_eligible)

