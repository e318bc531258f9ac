"""Layer choices shared by the book's families: activations by name, pooling by name, and where
BatchNorm sits relative to the activation (D2L 8.5 discusses both places)."""

from __future__ import annotations

from torch import nn

from .registry import ModelArgumentError, one_of

# model.activation: the name a config writes -> the layer (no arguments; PyTorch's defaults).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}
POOLS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}  # model.pooling
BN_POSITIONS = ("before", "after")  # model.bn_position: BatchNorm before or after the activation

ACTIVATION = one_of(tuple(ACTIVATIONS), "relu")
POOLING = one_of(tuple(POOLS), "max")
BN_POSITION = one_of(BN_POSITIONS, "after")


def norm(channels: int, dims: int) -> nn.Module:
    """BatchNorm over ``channels``: 2d for (B, C, H, W) maps, 1d for (B, C) features."""
    return nn.BatchNorm2d(channels) if dims == 4 else nn.BatchNorm1d(channels)


def norm_act(channels: int, dims: int, activation: str, batch_norm: bool, bn_position: str = "before"
             ) -> list[nn.Module]:
    """The activation, with BatchNorm before it (the book's place, D2L 8.5) or after it, or none."""
    act = ACTIVATIONS[activation]()
    if not batch_norm:
        return [act]
    return [norm(channels, dims), act] if bn_position == "before" else [act, norm(channels, dims)]


def refuse(message: str) -> None:
    """One clear line about a knob setting that cannot build (the message names the ``model.*`` key)."""
    raise ModelArgumentError(message)
