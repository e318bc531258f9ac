"""BatchNorm2d + sigmoid + 2x2 average pooling as one CPU kernel (and sigmoid + pooling), for the LeNets;
and a direct kernel for a first convolution of one input channel (grey images).

In LeNet-BN's first stage (256 x 6 x 24 x 24 floats, 3.5 MB) ATen's BatchNorm, sigmoid and pooling are
separate memory-bound passes, about half of a CPU training step. The C kernels in ``fused_cpu.c``
do the three at once: forward and backward on 2 cores, 4.5 ms -> 1.2 ms for that stage and 1.1 -> 0.5 ms
for the second (256 x 16 x 8 x 8); a whole LeNet-BN step 7.8 -> 6.3 ms (0.81; in-process A/B, see
docs/speed.md). The math is the same (batch statistics, biased variance to normalize and
unbiased for the running variance, as ATen); sums run in another order, so results match ATen's to float
rounding, not bit for bit. Each channel is normalized around one of its own values, so a channel whose
mean is large against its spread (mean 1e3, std 1e-2) keeps its digits.

How it is built: at first use, with the machine's C compiler (``$CC``, else ``cc``/``gcc``), ``-O3
-fopenmp`` and the architecture's native tuning (:func:`compiler_flags`), into ``~/.cache/cnnbench/kernels``
(``$CNNBENCH_KERNEL_CACHE`` overrides), named by a hash of the source, the flags, the compiler and the
CPU's features: about 0.3 s once per machine, then a file load. A failed build is remembered there under
the same hash (a ``.failed`` file holding the compiler's error): later processes log it and do not retry
until the source, the flags, the compiler or the CPU change (or the file is deleted). The library links
the OpenMP runtime torch has already loaded (libgomp), so its loops use torch's threads
(``torch.get_num_threads()``). Where any of this is missing (no compiler, not Linux, torch without GNU
OpenMP, or a second OpenMP runtime once the library is loaded) nothing is swapped and ATen's layers train
as before. A kernel that cannot allocate its work buffers returns a status that raises ``MemoryError``.

How it is used: :func:`use_fused_kernels` changes, inside ``nn.Sequential`` containers only (where the
order of the children is the order of the computation), the class of every ``BatchNorm2d`` followed by
``Sigmoid`` and a 2x2/stride-2 average pool to :class:`BatchNormSigmoidPool2d` (and of a ``Sigmoid``
followed by such a pool, without BatchNorm, to :class:`SigmoidPool2x2`); the sigmoid and pool that follow
become :class:`Absorbed` pass-throughs. Same module objects, same parameters and buffers: optimizers,
state dicts and checkpoints are unchanged. Inputs the kernel does not take (not float32, not contiguous
NCHW, an odd side, double backward, BatchNorm in eval mode with gradients) go through ATen's layers.

The one-channel convolution (:class:`OneChannelConv2d`): oneDNN runs LeNet's first convolution (1 -> 6
channels, 5x5) at a fifth of the core's fp32 peak, where its second runs at three quarters; ``fused_cpu.c``
computes it directly (2 rows x 32 columns x 6 output channels per step) and its weight gradient, 1.6-1.8x
faster on one core of a 2-core Xeon. Every ``nn.Conv2d`` with one input channel, stride 1, a square kernel of
at most 7 and even zero padding becomes one; it uses the kernel only where its input needs no gradient (the
network's input) and is float32, contiguous, on the CPU, outside autocast, in an NCHW model; otherwise it is
ATen's ``nn.Conv2d``. Results match ATen's to
float rounding (another order of the same sums); the weight gradient sums images in fixed blocks, so the
thread count does not change it.

Max pooling (:class:`MaxPool2dKernel`): ATen's CPU max pool keeps an int64 index per output and its backward
zeroes the whole input gradient in a pass of its own; in VGG-11 at 224 px (bf16, channels-last, batch 128, 2
threads) the first stage's pool took about 94 ms forward and 100 ms backward of a 0.6-1 s step. ``fused_cpu.c``
keeps each maximum's window offset in a byte, zeroes one image's gradient while it is in the cache (and, for
windows that tile the image, writes each place once, no zeroing) and vectorizes over the channels of a
channels-last tensor: that pool 125 -> 65 ms forward and backward; 3x3/stride-2 pools 1.2-1.4x faster (2-core
Xeon, one process, best of 4). Every plain ``nn.MaxPool2d`` (no indices returned, floor mode, no dilation, at
most 254 values a window) becomes one, anywhere in the model; inside a plain ``nn.Sequential`` a ``ReLU``
right after it (where ``device.fast_pooling`` moved it) is absorbed too: the kernel writes max(maximum, 0) and
marks the windows whose maximum is not positive, which ReLU's backward gives no gradient. The results are
ATen's bit for bit (the first maximum of a window, NaN taken, gradients added in ATen's order, bf16 rounded
after each addition); 4-d float32 or bf16 inputs, contiguous NCHW or channels-last; others go through ATen's
pool (and the absorbed ReLU).
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...config import cache_root
from ...runfolder.disk import atomic_path
from .kernels import AvgPool2x2, as_pair, memory_layout, pool_eligible

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fused_cpu.c")
CACHE_ENV = "CNNBENCH_KERNEL_CACHE"
CPUINFO = Path("/proc/cpuinfo")
# -fno-math-errno -fno-trapping-math let the loops vectorize; no -ffast-math (its start-up code would
# change the whole process's floating-point mode).
COMMON_FLAGS = ["-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
# Native tuning: the library is built on the machine that runs it (the CPU's features are in its name).
# x86: also 512-bit vectors where the CPU has them (gcc stops at 256 by default); an aarch64 gcc rejects
# that flag, and spells the native CPU -mcpu=native. Other architectures: the compiler's defaults.
X86_MACHINES = {"x86_64", "amd64", "i386", "i686"}
ARM_MACHINES = {"aarch64", "arm64"}
_P, _I, _D, _N = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
SIGNATURES = {  # every kernel returns a status (an int): 0, or STATUS_NO_MEMORY
    "bsp_batch_stats": [_P, _I, _I, _I, _P, _P, _D, _D, _P, _P, _P, _P, _P, _P, _P, _N],
    "bsp_forward": [_P, _I, _I, _I, _I, _P, _P, _P, _P, _N],
    "bsp_backward": [_P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _N],
    "sp_backward": [_P, _P, _I, _I, _I, _I, _P, _N],
    "c1_forward": [_P, _I, _I, _I, _P, _P, _I, _I, _I, _P, _N],
    "c1_weight_grad": [_P, _P, _I, _I, _I, _I, _I, _I, _P, _P, _N],
    "maxpool_forward": [_P, _I, _I, _I, _I, _N, _N, _I, _I, _I, _I, _I, _I, _N, _P, _P, _N],
    "maxpool_backward": [_P, _P, _I, _I, _I, _I, _N, _N, _I, _I, _I, _I, _I, _I, _P, _N],
}
MP_MAX_WINDOW = 254  # fused_cpu.c's: the most values in one max-pool window (an offset in a byte)
C1_MAX_K = 7  # fused_cpu.c's: the largest kernel side of the one-channel convolution
STATUS_NO_MEMORY = 1  # fused_cpu.c's BSP_NO_MEMORY: a work buffer's malloc failed, nothing written


# ----------------------------------------------------------------------------- building and loading

def kernel_cache_dir() -> Path:
    """Where built libraries are kept: ``$CNNBENCH_KERNEL_CACHE``, else ``~/.cache/cnnbench/kernels``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return cache_root() / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compiler_flags(machine: str | None = None) -> list[str]:
    """The compiler's flags for an architecture (``platform.machine()``'s name; this machine's by default)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine in X86_MACHINES:
        native = ["-march=native", "-mprefer-vector-width=512"]
    elif machine in ARM_MACHINES:
        native = ["-mcpu=native"]
    else:
        native = []
    return ["-O3", *native, *COMMON_FLAGS]


def _cpu_features() -> str:
    """The CPU's feature list: /proc/cpuinfo's first ``flags`` line (x86) or ``Features`` line (aarch64),
    else ``platform.processor()``."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def openmp_runtimes() -> set[str]:
    """Files of the OpenMP runtimes mapped into this process (GNU libgomp, Intel's libiomp5, LLVM's libomp)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    files = {line.split()[-1] for line in lines if len(line.split()) >= 6}
    return {f for f in files if any(name in Path(f).name for name in ("libgomp", "libiomp", "libomp"))}


def _torch_uses_gnu_openmp() -> bool:
    """The library links libgomp: only where torch's own OpenMP runtime is libgomp (one thread pool)."""
    if not sys.platform.startswith("linux") or "OpenMP" not in torch.__config__.parallel_info():
        return False
    runtimes = openmp_runtimes()
    return bool(runtimes) and all("libgomp" in Path(f).name for f in runtimes)


def library_path(compiler: str) -> Path:
    """The cached library's path: a hash of what the build depends on (source, flags, the compiler's path
    and version, the CPU's features, the architecture)."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = "\n".join([SOURCE.read_text(), " ".join(compiler_flags()), compiler, version, _cpu_features(),
                     platform.machine()])
    return kernel_cache_dir() / f"fused_cpu-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def failure_marker(target: Path) -> Path:
    """Where a failed build of ``target`` is remembered: its name (the same hash) with ``.failed``."""
    return target.with_suffix(".failed")


def _remember_failure(marker: Path, error: str) -> None:
    """Write the compiler's error to ``marker`` (whole or not at all: a temporary file, then renamed)."""
    try:
        with atomic_path(marker) as tmp:
            tmp.write_text(error)
    except OSError as exc:  # an unwritable cache: the next process tries again, no harm
        logger.debug("fused CPU kernels: cannot remember the failed build in %s: %s", marker, exc)


def build_library(compiler: str, target: Path) -> None:
    """Compile ``fused_cpu.c`` into ``target``; written under a temporary name, then renamed, so
    concurrent runs (a sweep's jobs) never load a half-written file. Where the compiler fails, its error
    is kept in :func:`failure_marker` (then the error is raised); a timeout is not remembered (a loaded
    machine may build next time)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        try:
            subprocess.run([compiler, *compiler_flags(), str(SOURCE), "-o", str(tmp)], check=True,
                           capture_output=True, text=True, timeout=300)
        except subprocess.CalledProcessError as exc:
            _remember_failure(failure_marker(target), exc.stderr or str(exc))
            raise


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL | None:
    """The fused kernels (built on first use, then from the cache), or None where they cannot be had."""
    if not _torch_uses_gnu_openmp():
        logger.info("fused CPU kernels: off (torch does not use GNU OpenMP on this system)")
        return None
    compiler = _compiler()
    if compiler is None:
        logger.info("fused CPU kernels: off (no C compiler: set CC, or install gcc)")
        return None
    try:
        path = library_path(compiler)
        marker = failure_marker(path)
        if marker.exists() and not path.exists():  # a build of this source, flags and compiler failed before
            logger.warning("fused CPU kernels: off (their build failed before: %s; delete %s to try again)",
                           _last_line(marker.read_text(errors="replace")) or "no message", marker)
            return None
        if not path.exists():
            logger.info("fused CPU kernels: building %s", path)
            build_library(compiler, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        message = _last_line(getattr(exc, "stderr", None) or str(exc)) or type(exc).__name__
        logger.warning("fused CPU kernels: off (the build failed: %s)", message)
        return None
    # The library's libgomp.so.1 must be the one torch loaded (a wheel that ships it under another name would
    # leave two runtimes, two thread pools spinning against each other): then the kernels stay unused.
    if len(runtimes := openmp_runtimes()) != 1:
        logger.warning("fused CPU kernels: off (two OpenMP runtimes would run: %s)", ", ".join(sorted(runtimes)))
        return None
    for name, argtypes in SIGNATURES.items():
        getattr(lib, name).argtypes, getattr(lib, name).restype = argtypes, ctypes.c_int
    return lib


def check_status(kernel: str, status: int) -> None:
    """Raise for a kernel's nonzero status: MemoryError for a failed allocation, RuntimeError otherwise."""
    if status == STATUS_NO_MEMORY:
        raise MemoryError(f"fused CPU kernel {kernel}: could not allocate its work buffers")
    if status != 0:
        raise RuntimeError(f"fused CPU kernel {kernel} failed (status {status})")


def call_kernel(kernel: str, *args: object) -> None:
    """Run one of the library's kernels (``SIGNATURES`` gives the arguments) and check its status."""
    check_status(kernel, getattr(load_library(), kernel)(*args))


# ----------------------------------------------------------------------------- autograd functions

def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _fits(x: torch.Tensor) -> bool:
    """The kernels' inputs: contiguous NCHW float32 on the CPU, even sides, outside torch.compile."""
    return (x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
            and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0 and x.numel() > 0
            and not torch.compiler.is_compiling() and load_library() is not None)


class _BatchNormSigmoidPool(torch.autograd.Function):
    """(B, C, H, W) -> (B, C, H/2, W/2): avgpool2x2(sigmoid(batch_norm(z))) with the batch's statistics."""

    @staticmethod
    def forward(ctx, z, weight, bias, bn: nn.BatchNorm2d, momentum: float):
        threads = torch.get_num_threads()
        n, c, h, w = z.shape
        # (C,) each: a value of each channel (the center), the batch mean relative to it, 1/std, the
        # affine map y = scale * (z - center) + shift
        center, mean, invstd, scale, shift = torch.empty(5, c).unbind(0)
        update = bn.training and bn.track_running_stats
        weight_, bias_ = (t.detach().contiguous() if t is not None else None for t in (weight, bias))
        call_kernel("bsp_batch_stats", _ptr(z), n, c, h * w, _ptr(weight_), _ptr(bias_), bn.eps, momentum,
                    _ptr(bn.running_mean) if update else None, _ptr(bn.running_var) if update else None,
                    _ptr(center), _ptr(mean), _ptr(invstd), _ptr(scale), _ptr(shift), threads)
        out = torch.empty(n, c, h // 2, w // 2)  # (B, C, H/2, W/2)
        call_kernel("bsp_forward", _ptr(z), n, c, h, w, _ptr(center), _ptr(scale), _ptr(shift), _ptr(out), threads)
        ctx.save_for_backward(z, center, scale, shift, mean, invstd, weight_)
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        z, center, scale, shift, mean, invstd, weight = ctx.saved_tensors
        n, c, h, w = z.shape
        grad = grad.contiguous()  # (B, C, H/2, W/2)
        dz = torch.empty_like(z) if ctx.needs_input_grad[0] else None
        dweight, dbias = torch.empty(2, c).unbind(0)
        call_kernel("bsp_backward", _ptr(grad), _ptr(z), n, c, h, w, _ptr(center), _ptr(scale), _ptr(shift),
                    _ptr(mean), _ptr(invstd), _ptr(weight), _ptr(dz), _ptr(dweight), _ptr(dbias),
                    torch.get_num_threads())
        return dz, dweight if ctx.has_weight else None, dbias if ctx.has_bias else None, None, None


class _SigmoidPool(torch.autograd.Function):
    """(B, C, H, W) -> (B, C, H/2, W/2): avgpool2x2(sigmoid(z))."""

    @staticmethod
    def forward(ctx, z):
        n, c, h, w = z.shape
        out = torch.empty(n, c, h // 2, w // 2)  # (B, C, H/2, W/2)
        call_kernel("bsp_forward", _ptr(z), n, c, h, w, None, None, None, _ptr(out), torch.get_num_threads())
        ctx.save_for_backward(z)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        n, c, h, w = z.shape
        dz = torch.empty_like(z)
        call_kernel("sp_backward", _ptr(grad.contiguous()), _ptr(z), n, c, h, w, _ptr(dz), torch.get_num_threads())
        return dz


class _OneChannelConv(torch.autograd.Function):
    """(B, 1, H, W) -> (B, O, Ho, Wo): a stride-1 convolution of a one-channel input that needs no gradient
    (the network's input), with the same zero padding on every side; gradients for the weight and bias."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        n, _, h, w = x.shape
        o, k = weight.shape[0], weight.shape[-1]
        weight_ = weight.detach().contiguous()
        bias_ = bias.detach().contiguous() if bias is not None else None
        out = torch.empty(n, o, h + 2 * padding - k + 1, w + 2 * padding - k + 1)  # (B, O, Ho, Wo)
        call_kernel("c1_forward", _ptr(x), n, h, w, _ptr(weight_), _ptr(bias_), o, k, padding, _ptr(out),
                    torch.get_num_threads())
        ctx.save_for_backward(x)
        ctx.geometry, ctx.has_bias = (o, k, padding), bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        o, k, padding = ctx.geometry
        n, _, h, w = x.shape
        dweight, dbias = torch.empty(o, 1, k, k), torch.empty(o) if ctx.has_bias else None
        call_kernel("c1_weight_grad", _ptr(x), _ptr(grad.contiguous()), n, h, w, o, k, padding, _ptr(dweight),
                    _ptr(dbias), torch.get_num_threads())
        return None, dweight, dbias, None


class _MaxPool(torch.autograd.Function):
    """(B, C, H, W) -> (B, C, Ho, Wo): max pooling (and the ReLU after it, with ``relu``), in x's dtype and
    memory format; the window offset of each maximum kept in a byte for the backward."""

    @staticmethod
    def forward(ctx, x, geometry: tuple[int, int, int, int, int, int], relu: bool):
        kh, kw, sh, sw, ph, pw = geometry
        n, c, h, w = x.shape
        layout = memory_layout(x)
        shape = (n, c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        out = torch.empty(shape, dtype=x.dtype, memory_format=layout)  # (B, C, Ho, Wo)
        idx = torch.empty(shape, dtype=torch.uint8, memory_format=layout)
        call_kernel("maxpool_forward", _ptr(x), n, c, h, w, x.dtype == torch.bfloat16,
                    layout == torch.channels_last, *geometry, relu, _ptr(out), _ptr(idx), torch.get_num_threads())
        ctx.save_for_backward(idx)
        ctx.geometry, ctx.shape, ctx.dtype, ctx.layout = geometry, x.shape, x.dtype, layout
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        grad = grad.to(ctx.dtype).contiguous(memory_format=ctx.layout)  # (B, C, Ho, Wo)
        dx = torch.empty(ctx.shape, dtype=ctx.dtype, memory_format=ctx.layout)  # (B, C, H, W)
        call_kernel("maxpool_backward", _ptr(grad), _ptr(idx), n, c, h, w, ctx.dtype == torch.bfloat16,
                    ctx.layout == torch.channels_last, *ctx.geometry, _ptr(dx), torch.get_num_threads())
        return dx, None, None


def _pool(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the absorbed pool computed: a copy of it as it was (AvgPool2x2's fast pooling or ATen's)."""
    pool = head.__dict__.get("_absorbed_pool")
    return pool(x) if pool is not None else F.avg_pool2d(x, 2, 2)


# ----------------------------------------------------------------------------- modules and the swap

class BatchNormSigmoidPool2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` that also applies the ``Sigmoid`` and 2x2 average pool that follow it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_stats = self.training or not self.track_running_stats
        if _fits(x) and batch_stats:
            momentum = self.momentum
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                if momentum is None:  # a cumulative average, as nn.BatchNorm2d
                    momentum = 1.0 / float(self.num_batches_tracked)
            return _BatchNormSigmoidPool.apply(x, self.weight, self.bias, self, momentum or 0.0)
        if _fits(x) and not torch.is_grad_enabled():  # evaluation: the running statistics, an affine map
            scale = torch.rsqrt(self.running_var + self.eps)
            scale = scale * self.weight if self.weight is not None else scale
            # y = scale * (x - running_mean) + bias, around the running mean: scale * x - running_mean * scale
            # would cancel in float where the mean is large against the spread
            center, shift = self.running_mean, self.bias if self.bias is not None else torch.zeros_like(scale)
            out = torch.empty(x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
            call_kernel("bsp_forward", _ptr(x), *x.shape, _ptr(center), _ptr(scale), _ptr(shift), _ptr(out),
                        torch.get_num_threads())
            return out
        return _pool(self, torch.sigmoid(super().forward(x)))


class SigmoidPool2x2(nn.Sigmoid):
    """A ``Sigmoid`` that also applies the 2x2 average pool that follows it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fits(x):
            return _SigmoidPool.apply(x)
        return _pool(self, torch.sigmoid(x))


class OneChannelConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` of one input channel (a network's first layer on grey images) computed by the direct
    kernel of ``fused_cpu.c`` where its input needs no gradient; ATen's convolution otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not under autocast: the layer then computes in bf16/fp16 as the run asked (ATen's kernel).
        if (not x.requires_grad and _fits_one_channel(x) and self.weight.dtype == torch.float32
                and not _channels_last_weight(self.weight) and not torch.is_autocast_enabled(x.device.type)):
            return _OneChannelConv.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x)


class MaxPool2dKernel(nn.MaxPool2d):
    """An ``nn.MaxPool2d`` computed by ``fused_cpu.c``'s max pool (one-byte offsets, a backward without a
    separate zeroing pass), and also the ``nn.ReLU`` after it where that ReLU was absorbed; ATen's otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = self.__dict__.get("_absorbed_relu", False)
        if _fits_max_pool(x):
            return _MaxPool.apply(x, _max_pool_geometry(self), relu)
        out = super().forward(x)
        return F.relu(out) if relu else out


def _max_pool_geometry(m: nn.MaxPool2d) -> tuple[int, int, int, int, int, int]:
    """(kh, kw, sh, sw, ph, pw) of a max pool (its stride defaults to its kernel)."""
    (kh, kw), (ph, pw) = as_pair(m.kernel_size), as_pair(m.padding)
    sh, sw = as_pair(m.stride if m.stride else m.kernel_size)
    return kh, kw, sh, sw, ph, pw


def max_pool_eligible(m: nn.Module) -> bool:
    """A plain ``nn.MaxPool2d`` the kernel computes: no indices returned, floor mode, no dilation, a window of at
    most MP_MAX_WINDOW values (ATen itself refuses a padding over half the kernel)."""
    if type(m) is not nn.MaxPool2d or m.return_indices or m.ceil_mode or as_pair(m.dilation) != (1, 1):
        return False
    kh, kw, *_ = _max_pool_geometry(m)
    return kh * kw <= MP_MAX_WINDOW


def _fits_max_pool(x: torch.Tensor) -> bool:
    """The max pool kernel's inputs: 4-d float32 or bf16 on the CPU, contiguous NCHW or channels-last, outside
    torch.compile; not under double backward (its backward is once-differentiable)."""
    return (x.dim() == 4 and x.dtype in (torch.float32, torch.bfloat16) and x.device.type == "cpu"
            and x.numel() > 0
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            and not torch.compiler.is_compiling() and load_library() is not None)


def one_channel_eligible(m: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` the one-channel kernel computes: 1 input channel, square kernel of at most
    C1_MAX_K, stride and dilation 1, one group, the same zero padding on every side."""
    return (type(m) is nn.Conv2d and m.in_channels == 1 and m.groups == 1 and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.kernel_size[0] == m.kernel_size[1] <= C1_MAX_K
            and m.padding_mode == "zeros" and not isinstance(m.padding, str) and m.padding[0] == m.padding[1])


def _fits_one_channel(x: torch.Tensor) -> bool:
    """The one-channel kernel's inputs: contiguous (B, 1, H, W) float32 on the CPU, outside torch.compile."""
    return (x.dim() == 4 and x.shape[1] == 1 and x.dtype == torch.float32 and x.device.type == "cpu"
            and x.is_contiguous() and x.numel() > 0 and not torch.compiler.is_compiling()
            and load_library() is not None)


def _channels_last_weight(weight: torch.Tensor) -> bool:
    """A model moved to channels-last (``device.channels_last``): with one input channel only the weight's
    strides say so (stride 1 between channels), and ATen's convolution then returns a channels-last output
    that the layers after it keep; such a layer stays ATen's, so the whole network keeps the run's layout."""
    return weight.shape[-1] * weight.shape[-2] > 1 and weight.stride(1) == 1


class Absorbed(nn.Module):
    """A layer whose work the layer before it now does (the class of a swapped ``Sigmoid`` or pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return "computed by the previous layer"


def _is_pool(m: nn.Module) -> bool:
    return type(m) is AvgPool2x2 or pool_eligible(m)


def use_fused_kernels(model: nn.Module) -> list[str]:
    """Swap BatchNorm2d + Sigmoid + 2x2 pool (and Sigmoid + 2x2 pool) runs inside ``nn.Sequential``
    containers for the fused kernels, and one-input-channel convolutions (:func:`one_channel_eligible`) for
    the direct kernel; returns the names of the layers that now do the work (none where the kernels cannot
    be built)."""
    candidates = []
    for prefix, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
            continue
        kids = list(parent.named_children())
        i = 0
        while i < len(kids):
            window = [m for _, m in kids[i:i + 3]]
            name = f"{prefix}.{kids[i][0]}" if prefix else kids[i][0]
            if (len(window) == 3 and type(window[0]) is nn.BatchNorm2d and type(window[1]) is nn.Sigmoid
                    and _is_pool(window[2])):
                candidates.append((name, window[0], BatchNormSigmoidPool2d, window[1:]))
                i += 3
            elif len(window) >= 2 and type(window[0]) is nn.Sigmoid and _is_pool(window[1]):
                candidates.append((name, window[0], SigmoidPool2x2, window[1:2]))
                i += 2
            elif len(window) >= 2 and max_pool_eligible(window[0]) and type(window[1]) is nn.ReLU:
                candidates.append((name, window[0], MaxPool2dKernel, window[1:2]))
                i += 2
            else:
                i += 1
    convs = [(name, m) for name, m in model.named_modules() if one_channel_eligible(m)]
    pools = [(name, m) for name, m in model.named_modules() if max_pool_eligible(m)]  # with a ReLU or without
    if not (candidates or convs or pools) or load_library() is None:
        return []
    for _, m in convs:
        m.__class__ = OneChannelConv2d
    for _, m in pools:
        m.__class__ = MaxPool2dKernel
    for _, head, cls, followers in candidates:
        if cls is MaxPool2dKernel:
            head.__dict__["_absorbed_relu"] = True  # the pool applies the ReLU (both of its paths)
        else:
            # The fallback path's pool: a copy of the pool before its swap (pools hold no parameters or
            # buffers; kept out of the registered children, so state dicts keep their keys).
            head.__dict__["_absorbed_pool"] = copy.copy(followers[-1])
        head.__class__ = cls
        for m in followers:
            m.__class__ = Absorbed
    swapped = {name for name, *_ in candidates} | {name for name, _ in convs} | {name for name, _ in pools}
    return [name for name, _ in model.named_modules() if name in swapped]  # in the model's order
