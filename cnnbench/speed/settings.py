"""Speed settings: what the ``device`` group's options become on the device at hand.

``resolve_speed`` turns the options into :class:`SpeedSettings`; ``auto`` precision and memory layout
are decided by ``autotune``, which times a few training steps of each candidate on a copy of the model
(like cudnn.benchmark, for the whole step). ``peak_matmul_flops`` measures the device's dense matmul
rate, the ceiling ``cnnbench bench`` compares achieved FLOP/s with.
"""

from __future__ import annotations

import copy
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import DeviceLoader
from ..devices import bf16_supported, synchronize
from ..errors import ConfigError
from ..machine import hardware_key
from ..schema import DeviceConfig
from .allocator import malloc_tuned
from .compiling import check_compiler, wants_compile
from .cpu.fused import use_fused_kernels
from .cpu.kernels import (
    faster_as_gemm,
    faster_in_nhwc,
    pool_before_relu,
    set_gemm_weight_grads,
    set_nhwc_weight_grads,
    time_conv_weight_grads,
    time_gemm_weight_grads,
    use_fast_pooling,
)
from .decisions import MODES, decide
from .dynamo import lazy_step_class
from .load import thread_setting
from .precision import Precision
from .threads import omp_wait_policy

logger = logging.getLogger(__name__)

AUTOTUNE_BATCH = 128  # examples per timed step: per-example speed settles by then; more only slows tuning
SLOW_STEP_S = 0.5  # a first step slower than this is timed once, so tuning a big network on a CPU stays short
DROP_BEHIND = 1.5  # autotune rounds: a candidate this many times slower than the fastest is timed no more
# Networks below this many forward FLOPs per image (both LeNets, FastNet-S/M) are timed more closely at
# start-up: a step costs milliseconds there, and choices worth a few percent of it (each convolution's
# weight gradient, device.conv_weight_grad; the layout at the run's own batch size, in 5 rounds of 2
# steps) cost a fraction of a second to time; in the bigger networks the same would cost many seconds.
SMALL_NETWORK_FLOPS = 50e6


@dataclass
class SpeedSettings:
    """The speed options a run ends up with, after ``auto`` values are decided for the device."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    fused_optimizer: bool = False
    fast_pooling: bool = False  # 2x2 average pools as strided adds (cnnbench.speed.cpu.kernels), CPU only
    # layers that do BatchNorm2d + sigmoid + 2x2 pool (or sigmoid + pool) in one C kernel (cnnbench.speed.cpu.fused)
    fused_kernels: list[str] = field(default_factory=list)
    # convolutions whose weight gradient is computed from channels-last copies (cnnbench.speed.cpu.kernels), and
    # every timed layer's channels-last / ATen time
    nhwc_weight_grads: list[str] = field(default_factory=list)
    conv_weight_grad_ratios: dict[str, float] = field(default_factory=dict)
    # convolutions of the bigger networks whose weight gradient is one GEMM (cnnbench.speed.cpu.kernels), and
    # every timed layer's GEMM / ATen time
    gemm_weight_grads: list[str] = field(default_factory=list)
    gemm_weight_grad_ratios: dict[str, float] = field(default_factory=dict)
    # the OpenMP wait torch's runtime read (cnnbench.speed.threads): OMP_WAIT_POLICY, "spin N" (libgomp's
    # GOMP_SPINCOUNT), "blocktime N ms" (KMP_BLOCKTIME, Intel's or LLVM's runtime), None: its default
    omp_wait_policy: str | None = None
    malloc_tuning: bool = False  # glibc malloc keeps freed buffers for reuse (cnnbench.speed.allocator), process-wide
    tuning: dict = field(default_factory=dict)  # examples/sec of every candidate that autotune timed
    # where the timed choices came from (cnnbench.speed.decisions): mode, source (cache | timed), file,
    # when they were timed, the key; None when nothing is decided by timing
    autotune: dict | None = None


# The ``device`` options with a fixed set of values that their type alone does not say (the schema,
# cnnbench.schema.DeviceConfig, types the rest: booleans, the thread count). YAML's true/false arrive as
# booleans: ``maybe`` is refused, not read as false.
DEVICE_CHOICES: dict[str, tuple] = {
    "precision": ("fp32", "bf16", "fp16", "auto"),
    "channels_last": (True, False, "auto"),
    "compile": (True, False, "auto"),
    "fused_optimizer": (True, False, "auto"),
    "conv_weight_grad": ("auto", "native"),
    "autotune": MODES,
}


def check_device_options(cfg: DeviceConfig, device: torch.device) -> None:
    """The ``device`` values checked before a run folder exists: the choices above, and what the device
    at hand cannot do (fp16 without CUDA, torch.compile on the CPU without a C++ compiler)."""
    for key, choices in DEVICE_CHOICES.items():
        value = getattr(cfg, key)
        if not any(value is c if isinstance(c, bool) else value == c for c in choices):
            words = ", ".join(str(c).lower() for c in choices)
            raise ConfigError(f"device.{key} must be one of {words}, got {value!r}")
    thread_setting(cfg.num_threads)
    if cfg.precision != "auto":
        Precision.create(str(cfg.precision), device)  # fp16 needs CUDA
    if cfg.compile is True:
        check_compiler(device)


def candidate_name(precision: str, channels_last: bool) -> str:
    """'bf16+channels_last', 'fp32', ...: how a candidate is named in the summary's ``tuning``."""
    return f"{precision}{'+channels_last' if channels_last else ''}"


def time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision, steps: int,
               warmup: bool = True) -> float:
    """Seconds per training step of ``model`` on one batch, after one untimed step when ``warmup`` (one
    timed step only when that first step takes over SLOW_STEP_S)."""
    # lr 0: timing only, weights stay as they are; torch's SGD that does not import the compiler (.dynamo)
    opt = lazy_step_class(torch.optim.SGD)(model.parameters(), lr=0.0)

    def step() -> None:
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if warmup:
        t0 = time.perf_counter()
        step()
        synchronize(x.device)
        if time.perf_counter() - t0 > SLOW_STEP_S:
            steps = 1
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(x.device)
    return (time.perf_counter() - t0) / steps


def autotune(model: nn.Module, loader: DeviceLoader, device: torch.device, candidates,
             steps: int = 3, rounds: int = 1, batch: int | None = AUTOTUNE_BATCH) -> tuple[tuple[str, bool], dict]:
    """Time a few training steps of each (precision, channels_last) candidate on a copy of ``model``.

    Which is fastest depends on the network and the device (on a CPU with AMX, bf16 + channels_last
    is 1.7x faster for ResNet-18 at 96 pixels, while channels_last makes LeNet-BN's BatchNorm 2x
    slower), so it is measured rather than guessed. ``batch`` examples per step (None: the loader's
    whole batch). With several ``rounds`` the candidates take turns and each one's median counts: the
    process's own warm-up (the allocator's first large blocks) and a slow moment of the machine then fall
    on no candidate alone. Measured on LeNet, 2 cores, one round of 3 steps at 128 images: the first
    candidate timed 14-16% slower than the second in the first call of a process, 2-4% in later ones.
    A candidate DROP_BEHIND times slower than the fastest after a round is timed no more.
    Returns the winner and every candidate's examples/sec (its median over the rounds it was timed in).
    """
    x, y = next(loader.batches(epoch=0, limit=1))
    x, y = x[:batch], y[:batch]  # (B, 1, S, S), (B,)

    def trial(precision: str, channels_last: bool) -> tuple[nn.Module, torch.Tensor, Precision]:
        if not channels_last:
            return copy.deepcopy(model), x, Precision.create(precision, device)
        layout = torch.channels_last
        return (copy.deepcopy(model).to(memory_format=layout), x.contiguous(memory_format=layout),
                Precision.create(precision, device))

    # One round: each copy is dropped once timed (a big network's copies would not fit side by side).
    kept = {c: trial(*c) for c in candidates} if rounds > 1 else {}
    seconds: dict[str, list[float]] = {candidate_name(*c): [] for c in candidates}
    running = list(candidates)
    for r in range(rounds):
        for c in running:
            trial_model, xx, precision = kept[c] if kept else trial(*c)
            seconds[candidate_name(*c)].append(time_steps(trial_model, xx, y, precision, steps, warmup=r == 0))
            del trial_model
        # A candidate far behind after a round leaves the contest (LeNet-BN in channels-last: 2x), and
        # once one is left the timing stops.
        fastest = min(statistics.median(seconds[candidate_name(*c)]) for c in running)
        running = [c for c in running if statistics.median(seconds[candidate_name(*c)]) <= DROP_BEHIND * fastest]
        if len(running) == 1:
            break
    timings = {name: x.shape[0] / statistics.median(s) for name, s in seconds.items()}
    best = max(candidates, key=lambda c: timings[candidate_name(*c)])
    return best, timings


def resolve_speed(cfg: DeviceConfig, device: torch.device, model: nn.Module, loader: DeviceLoader,
                  deterministic: bool = False, flops_per_image: int = 0, key: dict | None = None,
                  tunes: bool = True) -> SpeedSettings:
    """Turn the ``device`` group's values into settings; ``auto`` precision/layout (and, on the CPU, the
    convolutions' weight-gradient layout) are decided by timing, once per ``key`` (what the run trains:
    model, input, batch; :mod:`cnnbench.speed.decisions` adds the machine and the question) and then kept.

    Deterministic runs skip the timing: fp32, NCHW. ``tunes=False`` (torchrun ranks but 0, which adopt
    rank 0's decision) times nothing and leaves the timed choices at fp32, NCHW, ATen's convolutions.
    """
    precision, channels_last = str(cfg.precision), cfg.channels_last
    if deterministic:
        precision = "fp32" if precision == "auto" else precision
        channels_last = False if str(channels_last) == "auto" else channels_last
    settings = SpeedSettings(compile=wants_compile(cfg.compile), malloc_tuning=malloc_tuned(),
                             omp_wait_policy=omp_wait_policy())
    # Not under torch.compile: Inductor writes its own pooling loops, and a custom autograd.Function in
    # the graph keeps AOTAutograd from caching it (the next run would trace it again).
    if device.type == "cpu" and cfg.fast_pooling and not settings.compile:
        # before autotune, so it times the model as trained
        settings.fast_pooling = use_fast_pooling(model) + pool_before_relu(model) > 0
    if device.type == "cpu" and cfg.fused_kernels and not settings.compile:
        settings.fused_kernels = use_fused_kernels(model)  # the same: the autotune times the fused layers
        if settings.fused_kernels:
            logger.debug("fused CPU kernels (BatchNorm2d + sigmoid + 2x2 pool, or sigmoid + pool): layers %s",
                        ", ".join(settings.fused_kernels))
    fused = cfg.fused_optimizer
    settings.fused_optimizer = device.type == "cuda" if str(fused) == "auto" else bool(fused)
    candidates = candidates_of(precision, channels_last, device)
    question = tuning_question(cfg, device, deterministic, settings, candidates, flops_per_image)
    choice = {"precision": candidates[0][0], "channels_last": candidates[0][1], "nhwc_weight_grads": [],
              "gemm_weight_grads": []}
    if not question:  # one candidate, convolutions not timed: nothing to decide
        settings.precision, settings.channels_last = choice["precision"], choice["channels_last"]
        return settings
    if tunes:
        def time_it() -> dict:
            return time_choices(model, loader, device, question, candidates)

        mode = str(cfg.autotune)
        entry, settings.autotune = decide({**(key or {}), **question, **hardware_key(device),
                                           "torch": torch.__version__}, mode, time_it)
        choice = entry["choice"]
        settings.tuning = entry["timings"].get("tuning", {})
        settings.conv_weight_grad_ratios = entry["timings"].get("conv_weight_grad_ratios", {})
        settings.gemm_weight_grad_ratios = entry["timings"].get("gemm_weight_grad_ratios", {})
    settings.precision, settings.channels_last = choice["precision"], choice["channels_last"]
    settings.nhwc_weight_grads = set_nhwc_weight_grads(model, choice["nhwc_weight_grads"])
    settings.gemm_weight_grads = set_gemm_weight_grads(model, choice["gemm_weight_grads"])
    return settings


def candidates_of(precision: str, channels_last, device: torch.device) -> list[tuple[str, bool]]:
    """The (precision, channels_last) pairs ``auto`` values leave open on ``device`` (one when none is auto)."""
    precisions = [precision] if precision != "auto" else (["fp32", "bf16"] if bf16_supported(device) else ["fp32"])
    layouts = [bool(channels_last)] if str(channels_last) != "auto" else [False, True]
    if device.type == "mps":
        layouts = [False]
    return [(p, c) for p in precisions for c in layouts]


def tuning_question(cfg: DeviceConfig, device: torch.device, deterministic: bool, settings: SpeedSettings,
                    candidates: list[tuple[str, bool]], flops_per_image: int) -> dict:
    """What start-up timing has to decide for this run ({} when nothing): the (precision, layout)
    candidates and whether the convolutions' weight-gradient layout is timed, with the settings that change
    what is timed (compile, fast pooling, fused kernels, whether a small network is timed closely)."""
    precision = candidates[0][0] if len(candidates) == 1 else "auto"
    layout = candidates[0][1] if len(candidates) == 1 else "auto"
    convs = _tunes_conv_weight_grads(cfg.conv_weight_grad, layout, device, deterministic,
                                     settings.compile, precision, flops_per_image)
    gemm = _tunes_gemm_weight_grads(cfg.conv_weight_grad, device, deterministic, settings.compile, flops_per_image)
    if not convs and not gemm and len(candidates) < 2:
        return {}
    return {"candidates": [candidate_name(*c) for c in candidates] if len(candidates) > 1 else [],
            "conv_weight_grads": convs, "gemm_weight_grads": gemm, "compile": settings.compile,
            "fast_pooling": settings.fast_pooling, "fused_kernels": settings.fused_kernels,
            "closely": _small(flops_per_image)}


def time_choices(model: nn.Module, loader: DeviceLoader, device: torch.device, question: dict,
                 candidates: list[tuple[str, bool]]) -> dict:
    """Time what ``question`` (:func:`tuning_question`) asks, on copies of ``model`` and a batch of
    ``loader``: ``{"choice": {precision, channels_last, nhwc_weight_grads}, "timings": {tuning,
    conv_weight_grad_ratios}}`` (one of ``candidates``, the (precision, channels_last) pairs). The random
    number generators are left as they were, so a run that timed trains like one that read the decision
    (dropout in a timed step draws from them)."""
    chosen = {"precision": candidates[0][0], "channels_last": candidates[0][1]}
    timings: dict = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if question["conv_weight_grads"]:
            x, _ = next(loader.batches(epoch=0, limit=1))  # (B, C, H, W): this rank's batch size
            ratios = time_conv_weight_grads(model, x, x.shape[0])
            timings["conv_weight_grad_ratios"] = ratios
            chosen["nhwc_weight_grads"] = set_nhwc_weight_grads(model, faster_in_nhwc(ratios))
            logger.debug("convolution weight gradients from channels-last copies: %s (channels-last / ATen time: %s)",
                         ", ".join(chosen["nhwc_weight_grads"]) or "none",
                        ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        if len(candidates) > 1:
            closely = dict(steps=2, rounds=5, batch=None) if question["closely"] else {}
            (chosen["precision"], chosen["channels_last"]), timings["tuning"] = autotune(
                model, loader, device, candidates, **closely)
            logger.debug("autotune picked %s (examples/sec: %s)",
                        candidate_name(chosen["precision"], chosen["channels_last"]),
                        ", ".join(f"{k} {v:.0f}" for k, v in timings["tuning"].items()))
        if question.get("gemm_weight_grads"):  # in the precision and layout just chosen
            x, _ = next(loader.batches(epoch=0, limit=1))  # (B, C, H, W): this rank's batch size
            dtype = torch.bfloat16 if chosen["precision"] == "bf16" else torch.float32
            ratios = time_gemm_weight_grads(model, x, x.shape[0], dtype, chosen["channels_last"])
            timings["gemm_weight_grad_ratios"] = ratios
            chosen["gemm_weight_grads"] = faster_as_gemm(ratios)
            logger.debug("convolution weight gradients as one GEMM: %s (GEMM / ATen time: %s)",
                         ", ".join(chosen["gemm_weight_grads"]) or "none",
                         ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    chosen.setdefault("nhwc_weight_grads", [])
    chosen.setdefault("gemm_weight_grads", [])
    return {"choice": chosen, "timings": timings}


def prepare_speed(cfg: DeviceConfig, device: torch.device, model: nn.Module, loaders: Sequence[DeviceLoader | None],
                  deterministic: bool, flops_per_image: int,
                  agree: Callable[[SpeedSettings], SpeedSettings] = lambda s: s, key: dict | None = None,
                  tunes: bool = True) -> SpeedSettings:
    """The run's speed settings, decided (:func:`resolve_speed`, timing what is ``auto`` on the training
    loader, ``loaders[0]``, or reading the kept decision for ``key``) and applied to ``model`` and every
    loader (None: no such split). ``agree`` makes the settings every rank uses (under torchrun, rank 0's:
    only rank 0 ``tunes``), so each rank adopts the agreed layers and layout here."""
    settings = agree(resolve_speed(cfg, device, model, loaders[0], deterministic, flops_per_image, key, tunes))
    set_nhwc_weight_grads(model, settings.nhwc_weight_grads)
    set_gemm_weight_grads(model, settings.gemm_weight_grads)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
        for loader in loaders:
            if loader is not None:
                loader.channels_last = True
    return settings


def _small(flops_per_image: int) -> bool:
    return 0 < flops_per_image < SMALL_NETWORK_FLOPS


def _tunes_gemm_weight_grads(option: str, device: torch.device, deterministic: bool, compiled: bool,
                             flops_per_image: int) -> bool:
    """device.conv_weight_grad=auto on the CPU for the bigger networks (the small ones time the channels-last
    copies instead, :func:`_tunes_conv_weight_grads`), trained eagerly, not deterministic runs (timings differ
    from run to run: the layers chosen could too)."""
    return (str(option) == "auto" and device.type == "cpu" and not deterministic and not compiled
            and flops_per_image >= SMALL_NETWORK_FLOPS)


def _tunes_conv_weight_grads(option: str, channels_last, device: torch.device, deterministic: bool, compiled: bool,
                             precision: str, flops_per_image: int) -> bool:
    """device.conv_weight_grad=auto on the CPU, for a small network trained eagerly in fp32 NCHW (the only
    case where the swapped layers differ; ``precision`` and ``channels_last`` may still be auto), and not
    for deterministic runs (timings differ run to run)."""
    return (str(option) == "auto" and device.type == "cpu" and not deterministic and not compiled
            and precision in ("fp32", "auto") and str(channels_last) != "True" and _small(flops_per_image))


def peak_matmul_flops(
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    iters: int | None = None,
    repeats: int = 3,
) -> float:
    """Measured dense matmul throughput of ``device`` in FLOP/s (2*n^3 per n x n matmul).

    Warms up, then times ``iters`` back-to-back matmuls ``repeats`` times (synchronizing on
    accelerators) and keeps the best. Defaults: n=2048 and 20 iterations on accelerators, n=1024 and 3
    iterations on the CPU (about a second on a 2-core machine).
    """
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    n = n if n is not None else (1024 if on_cpu else 2048)
    iters = iters if iters is not None else (3 if on_cpu else 20)
    a = torch.randn(n, n, device=device).to(dtype)  # (n, n)
    b = torch.randn(n, n, device=device).to(dtype)  # (n, n)
    for _ in range(2):  # warm-up: allocator, kernel selection, thread pool
        c = a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        for _ in range(iters):
            c = a @ b  # (n, n)
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    del c
    return 2.0 * n**3 * iters / best
