"""Faster CPU versions of layers whose ATen kernels dominate the small networks' steps.

2x2 average pooling with stride 2 (LeNet's two pools, DenseNet's transitions): ATen's CPU kernel takes
2.2 ms forward and about 6 ms backward for LeNet's first pool (256 x 6 x 28 x 28, one thread) -- a
quarter of the whole training step. As four strided adds forward and four strided copies backward it
takes 0.5 ms and 0.5 ms, with the same result bit for bit (the same additions in the same order, and a
multiplication by 0.25 is exactly a division by 4).

``use_fast_pooling(model)`` swaps every eligible ``nn.AvgPool2d`` in place for :class:`AvgPool2x2`
(no parameters or buffers, so state dicts and checkpoints are unchanged). cnnbench's build does it on
the CPU (``device.fast_pooling``); the book's pipeline (``cnnbench.book``) keeps ATen's kernel.
"""

from __future__ import annotations

import torch
from torch import nn

FAST_DTYPES = (torch.float32, torch.float64)  # bf16/fp16 inputs keep ATen's kernel (it accumulates in fp32)


def _layout(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class _AvgPool2x2(torch.autograd.Function):
    """(B, C, H, W) -> (B, C, H // 2, W // 2): the mean of each 2x2 block (a trailing odd row/column is
    dropped, as ``nn.AvgPool2d(2, 2)`` drops it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        ctx.shape, ctx.layout = x.shape, _layout(x)
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


def _eligible(m: nn.Module) -> bool:
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    if type(m) is not nn.AvgPool2d:
        return False
    stride = m.stride if m.stride is not None else m.kernel_size
    return (pair(m.kernel_size) == (2, 2) and pair(stride) == (2, 2)
            and pair(m.padding) == (0, 0) and not m.ceil_mode and m.divisor_override is None)


def use_fast_pooling(model: nn.Module) -> int:
    """Replace every 2x2/stride-2 ``nn.AvgPool2d`` in ``model`` by :class:`AvgPool2x2`; returns how many."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if _eligible(child):
                fast = AvgPool2x2(2, 2)
                fast.train(child.training)
                setattr(parent, name, fast)
                swapped += 1
    return swapped
