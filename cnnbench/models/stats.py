"""What ``cnnbench models`` and ``cnnbench summary`` print: sizes, FLOPs and per-block shapes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..fmt import human
from . import build_model, get_model_spec, list_models


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Leaf layers with no FLOPs in torch.utils.flop_counter's count (it counts conv, matmul and attention only).
_UNCOUNTED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Tanh, nn.Dropout,
              nn.Flatten, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def forward_flops(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Forward FLOPs for one image as torch.utils.flop_counter counts them (2 per multiply-add in conv and
    linear layers, nothing for biases, norms, pooling or activations).

    Networks built of the layers above are counted by forward hooks on their conv and linear layers with
    the counter's formulas (:func:`conv_flops`, :func:`linear_flops`); ``FlopCounterMode`` (a dispatch mode)
    gives the same figure -- the tests check it for every registered network -- but its first use imports
    torch._dynamo and sympy, 1.2 s of every run's start-up (measured on LeNet), and importing its module
    imports triton where torch's CUDA wheels installed it (0.09 s of every command; 2-core Xeon, 3 runs).
    Any other layer type goes through ``FlopCounterMode``.
    """
    leaves = [m for m in model.modules() if not list(m.children())]
    if not all(isinstance(m, (nn.Conv2d, nn.Linear, *_UNCOUNTED)) for m in leaves):
        return reference_flops(model, in_channels, image_size)
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):  # weight (C_out, C_in / groups, kh, kw)
            total += conv_flops(output.shape, module.weight.shape)
        else:  # nn.Linear on (..., in_features): a (rows, in) x (in, out) product
            rows = inputs[0].numel() // module.in_features
            total += linear_flops(rows, module.in_features, module.out_features)

    handles = [m.register_forward_hook(count) for m in leaves if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        _forward_one_image(model, in_channels, image_size)
    finally:
        for h in handles:
            h.remove()
    return total


def conv_flops(out_shape: Sequence[int], weight_shape: Sequence[int]) -> int:
    """FLOPs of a 2-D convolution as ``torch.utils.flop_counter.conv_flop_count`` counts them: every output
    element (B, C_out, H_out, W_out) is a dot product of C_in / groups * kh * kw terms, 2 FLOPs each; the
    weight is (C_out, C_in / groups, kh, kw)."""
    return 2 * math.prod(out_shape) * math.prod(weight_shape[1:])


def linear_flops(rows: int, in_features: int, out_features: int) -> int:
    """FLOPs of a (rows, in) x (in, out) product as ``torch.utils.flop_counter.mm_flop`` counts them."""
    return 2 * rows * in_features * out_features


def reference_flops(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Forward FLOPs for one image counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode  # imports triton where installed: only here

    with FlopCounterMode(display=False) as counter:
        _forward_one_image(model, in_channels, image_size)
    return int(counter.get_total_flops())


def _forward_one_image(model: nn.Module, in_channels: int, image_size: int) -> None:
    x = torch.zeros(1, in_channels, image_size, image_size)  # (1, C, H, W)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)


@dataclass
class BlockShape:
    """Output of one top-level block for a single input image."""

    name: str
    shape: tuple[int, ...]


def block_shapes(model: nn.Module, in_channels: int, image_size: int) -> list[BlockShape]:
    """Run one image through each top-level child in turn, as the book's shape loop does. A network whose
    forward is not its children in a row (torchvision's, timm's, your own class) runs whole instead, and
    each top-level child's output is recorded as it is called."""
    x = torch.zeros(1, in_channels, image_size, image_size)  # (1, C, H, W)
    shapes = []
    model.eval()
    if not (isinstance(model, nn.Sequential) or type(model).__module__.startswith(__package__ + ".")):
        return _called_shapes(model, x)
    with torch.no_grad():
        for child in model.children():
            x = child(x)
            shapes.append(BlockShape(type(child).__name__, tuple(x.shape)))
    return shapes


def _called_shapes(model: nn.Module, x: torch.Tensor) -> list[BlockShape]:
    """The output shape of every top-level child, in the order the model's forward calls them."""
    shapes: list[BlockShape] = []

    def hook_for(name: str):  # "Sequential features": the type, as the book prints it, and which child
        def hook(module: nn.Module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor):
                shapes.append(BlockShape(f"{type(module).__name__} {name}", tuple(output.shape)))
        return hook

    handles = [child.register_forward_hook(hook_for(name)) for name, child in model.named_children()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def activation_bytes(model: nn.Module, in_channels: int, image_size: int) -> int:
    """float32 bytes of every leaf module's output for one image: what a training step keeps around."""
    total = 0

    def hook(_module: nn.Module, _inputs, output) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * 4

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
    return total


def models_table(pattern: str | None = None, in_channels: int = 1, num_classes: int = 10,
                 size: int | None = None) -> str:
    """A text table of every registered network for ``in_channels`` x ``num_classes``, at its book resolution,
    or at ``size`` pixels (then a column says whether that side is above the network's minimum)."""
    at = f"FLOPs@{size}" if size else "FLOPs/img"
    header = f"{'name':<12} {'family':<10} {'params':>12} {at:>10} {'book res':>8} {'min res':>7}"
    header += f"  {f'{in_channels}x{size}x{size}':<12}" if size else ""
    rows = [header, "-" * len(header)]
    if (in_channels, num_classes, size) != (1, 10, None):  # say what the numbers are for
        rows.insert(0, f"inputs: {in_channels} channel(s), {num_classes} classes")
    for name in list_models(pattern):
        spec = get_model_spec(name)
        side = size or spec.book_resolution
        fits = side >= spec.min_resolution
        model = build_model(name, in_channels=in_channels, num_classes=num_classes,
                            image_size=side if fits else spec.book_resolution)
        params = count_parameters(model)
        flops = human(forward_flops(model, in_channels, side)) if fits else "-"
        row = (f"{name:<12} {spec.family:<10} {params:>12,} {flops:>10} "
               f"{spec.book_resolution:>8} {spec.min_resolution:>7}")
        if size:
            row += "  builds" if fits else f"  too small: dataset.resize={spec.min_resolution} or more"
        rows.append(row)
    return "\n".join(rows)


def summary_text(model: nn.Module, in_channels: int, image_size: int) -> str:
    """The book's per-block shape lines, then parameters, FLOPs and activation memory per image."""
    lines = [f"{b.name} output shape:\t{torch.Size(b.shape)}" for b in block_shapes(model, in_channels, image_size)]
    params = count_parameters(model)
    flops = forward_flops(model, in_channels, image_size)
    act = activation_bytes(model, in_channels, image_size)
    lines += [
        "",
        f"input: {in_channels}x{image_size}x{image_size}",
        f"parameters: {params:,} ({human(params * 4, 'B')} as float32)",
        f"forward FLOPs per image: {flops:,} ({human(flops)})",
        f"activation memory per image (float32, forward outputs of every layer): {human(act, 'B')}",
    ]
    return "\n".join(lines)
