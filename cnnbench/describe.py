"""What ``cnnbench models`` and ``cnnbench summary`` print: sizes, FLOPs and per-block shapes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .fmt import human
from .models import build_model, get_model_spec, list_models


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Forward FLOPs for one image (torch.utils.flop_counter: 2 per multiply-add in conv/linear)."""
    x = torch.zeros(1, in_channels, image_size, image_size)  # (1, C, H, W)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass
class BlockShape:
    """Output of one top-level block for a single input image."""

    name: str
    shape: tuple[int, ...]


def block_shapes(model: nn.Module, in_channels: int, image_size: int) -> list[BlockShape]:
    """Run one image through each top-level child in turn, as the book's shape loop does."""
    x = torch.zeros(1, in_channels, image_size, image_size)  # (1, C, H, W)
    shapes = []
    model.eval()
    with torch.no_grad():
        for child in model.children():
            x = child(x)
            shapes.append(BlockShape(type(child).__name__, tuple(x.shape)))
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


def models_table(pattern: str | None = None, in_channels: int = 1, num_classes: int = 10) -> str:
    """A text table of every registered network at its book resolution."""
    header = f"{'name':<12} {'family':<10} {'params':>12} {'FLOPs/img':>10} {'book res':>8} {'min res':>7}"
    rows = [header, "-" * len(header)]
    for name in list_models(pattern):
        spec = get_model_spec(name)
        model = build_model(name, in_channels=in_channels, num_classes=num_classes)
        params = count_parameters(model)
        flops = forward_flops(model, in_channels, spec.book_resolution)
        rows.append(
            f"{name:<12} {spec.family:<10} {params:>12,} {human(flops):>10} "
            f"{spec.book_resolution:>8} {spec.min_resolution:>7}"
        )
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
