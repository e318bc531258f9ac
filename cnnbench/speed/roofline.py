"""A training step's roofline: the time arithmetic alone needs (FLOPs over the measured matmul peak) against the
time memory traffic alone needs (bytes over the measured memory bandwidth); the larger bounds the step.

A network whose layers do little arithmetic per byte (VGG-11's 16/32-channel convolutions at 224 px, the
BatchNorm and ReLU passes between them) cannot reach the matmul peak however good its kernels are: its step
is bound by how fast the memory moves its activations. ``cnnbench bench`` shows both bounds beside the measured
speed, so "% of peak" is read against what the step could reach at all.

Bytes per step are counted op by op: one forward and backward of the model on the meta device (no arithmetic,
no memory) under a dispatch mode that adds the bytes of every tensor each ATen operation reads and writes.
That is eager execution's traffic with no reuse in caches between operations: an upper estimate of what must
move (a compiled step fuses elementwise work and moves less), so the memory bound it gives is conservative.
The bandwidth is a STREAM-like copy of a tensor far larger than the caches (bytes read plus bytes written per
second, the best of a few).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..devices import synchronize

COPY_MB = 256  # the copied tensor: far beyond a CPU's last-level cache


def measure_bandwidth(device: torch.device | str, megabytes: int = COPY_MB, repeats: int = 5) -> float:
    """Memory bandwidth of ``device`` in bytes/s: a ``megabytes`` tensor copied ``repeats`` times, the best;
    each copy reads and writes the tensor once."""
    device = torch.device(device)
    n = megabytes * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: the pages are mapped outside the timing
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / best


class ByteCounter(TorchDispatchMode):
    """Adds up the bytes of the tensors every ATen operation takes and returns (each storage once per
    operation; views and metadata-only operations move nothing)."""

    FREE = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "detach", "alias", "unsqueeze",
            "squeeze", "as_strided", "slice", "select", "reshape", "empty", "empty_like", "empty_strided",
            "zeros_like", "ones_like", "_to_copy_meta", "lift_fresh", "split", "split_with_sizes"}

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.__name__.split(".")[0] not in self.FREE:
            seen: set[tuple[int, int]] = set()
            for t in tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, torch.Tensor):
                    key = (id(t.untyped_storage()), t.storage_offset())
                    if key not in seen:
                        seen.add(key)
                        self.bytes += t.numel() * t.element_size()
        return out


def step_bytes(model: nn.Module, batch: int, in_channels: int, side: int, dtype: torch.dtype = torch.float32,
               channels_last: bool = False) -> int:
    """Bytes one training step of ``batch`` images moves, op by op (forward, the loss, backward; the optimizer's
    update of the weights added as reading weight, gradient and momentum and writing weight and momentum).
    ``model`` is copied to the meta device in ``dtype`` (bf16 autocast's activations and weights in bf16)."""
    import copy

    meta = copy.deepcopy(model).to(device="meta", dtype=dtype)
    meta.train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.empty(batch, in_channels, side, side, device="meta", dtype=dtype).to(memory_format=layout)
    y = torch.zeros(batch, dtype=torch.long, device="meta")
    counter = ByteCounter()
    with counter:
        loss = nn.functional.cross_entropy(meta(x).float(), y)
        loss.backward()
    weights = sum(p.numel() for p in model.parameters()) * 4  # fp32 master weights, SGD with momentum
    return counter.bytes + 5 * weights


@dataclass(frozen=True)
class Roofline:
    """One step's two bounds and the one that binds (seconds per step)."""

    flops: float  # training FLOPs of the step (3x the forward)
    bytes: float
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s

    @property
    def compute_s(self) -> float:
        return self.flops / self.peak_flops

    @property
    def memory_s(self) -> float:
        return self.bytes / self.bandwidth

    @property
    def bound_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        """"compute" or "memory": which side binds the step."""
        return "memory" if self.memory_s > self.compute_s else "compute"

    def fraction(self, step_s: float) -> float:
        """How close a measured step of ``step_s`` seconds comes to the bound (1.0: at it)."""
        return self.bound_s / step_s
