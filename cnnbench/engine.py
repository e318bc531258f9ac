"""The training loop's parts: device and precision set-up, one epoch of training, one evaluation.

Metrics are summed in device tensors and read back (one host sync) only at the logging points, never
per batch; the book's loop calls ``float()`` on every batch's accuracy, which stalls a GPU each step.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from .data import DeviceLoader
from .distributed import DistContext, all_sum
from .errors import ConfigError, CnnbenchError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
logger = logging.getLogger(__name__)


class TrainingDiverged(CnnbenchError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, epoch: float, loss: float, last_finite_loss: float | None, lr: float) -> None:
        self.step, self.epoch, self.loss, self.last_finite_loss, self.lr = step, epoch, loss, last_finite_loss, lr
        last = "none" if last_finite_loss is None else f"{last_finite_loss:.4g}"
        super().__init__(
            f"training diverged: the loss was {loss:.4g} at step {step} (epoch {epoch:.2f}); "
            f"last good loss {last}. Try a lower learning rate than {lr:g} "
            "(optimizer.lr=...) or gradient clipping (trainer.grad_clip_norm=1.0)."
        )


def resolve_device(kind: str, index: int | None = None) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; ``cuda`` without a GPU is refused.

    ``index`` picks a GPU (modulo the GPU count), so parallel sweep jobs can each take their own.
    """
    if kind in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0 if index is None else int(index) % torch.cuda.device_count())
    if kind == "auto":
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda was asked for but no CUDA device is available "
            "(torch.cuda.is_available() is False); use device=auto or device=cpu"
        )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device=mps was asked for but Apple's MPS backend is not available")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device.type {kind!r}; use auto, cpu, cuda or mps")
    return torch.device(kind)


def init_weights(model: nn.Module, scheme: str) -> None:
    """``xavier``: the book's init_weights (Xavier-uniform on every Linear and Conv2d weight)."""
    if scheme == "default":
        return
    if scheme != "xavier":
        raise ConfigError(f"unknown trainer.init {scheme!r}; use xavier or default")
    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):  # exact types, as the book's type(m) == ... test
            nn.init.xavier_uniform_(m.weight)


def build_optimizer(cfg: DictConfig, params, fused: bool = False) -> torch.optim.Optimizer:
    """torch.optim optimizer from the ``optimizer`` group (sgd, adam, adamw).

    ``fused`` asks for the single-kernel CUDA implementation; otherwise torch picks its default
    (the multi-tensor ``foreach`` path on CUDA, a per-parameter loop on the CPU).
    """
    name = cfg.name
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.get("nesterov", False), **extra,
        )
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **extra)
    raise ConfigError(f"unknown optimizer.name {name!r}; use sgd, adam or adamw")


def build_scheduler(cfg: DictConfig, optimizer, steps_per_epoch: int, epochs: int):
    """A per-step LambdaLR for ``cosine`` and ``step``; None for ``none`` (the book's constant lr)."""
    if cfg.name == "none":
        return None
    total = max(1, steps_per_epoch * epochs)
    if cfg.name == "cosine":
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        base = optimizer.param_groups[0]["lr"]
        floor = cfg.eta_min / base if base else 0.0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    elif cfg.name == "step":
        period = max(1, int(cfg.step_epochs * steps_per_epoch))

        def factor(step: int) -> float:
            return cfg.gamma ** (step // period)
    else:
        raise ConfigError(f"unknown scheduler.name {cfg.name!r}; use none, cosine or step")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Precision:
    """Autocast settings and the fp16 gradient scaler."""

    device: torch.device
    name: str = "fp32"
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, name: str, device: torch.device) -> "Precision":
        if name not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"unknown device.precision {name!r}; use fp32, bf16 or fp16")
        if name == "fp16" and device.type != "cuda":
            raise ConfigError("device.precision=fp16 needs CUDA; on the CPU use bf16 or fp32")
        scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None
        return cls(device, name, scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.name])


@dataclass
class EpochProgress:
    """Sums of the epoch so far; device tensors so that adding to them never syncs."""

    loss_sum: torch.Tensor  # () float32: sum over examples of the cross-entropy
    correct: torch.Tensor  # () int64: correctly classified training examples
    count: int = 0  # examples seen (known on the host from batch sizes)
    batches: int = 0  # batches done in this epoch

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochProgress":
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))


@dataclass
class LoopHooks:
    """What the loop reports to and asks of its caller, at logging points and between steps."""

    # A mean cross-entropy above this (nats) counts as diverged even when finite: chance level is
    # ln(10) = 2.3, and sigmoid LeNets at huge learning rates sit at 1e4+ without ever reaching NaN.
    divergence_loss: float | None = None
    on_log: Callable[[dict], None] = lambda metrics: None
    should_stop: Callable[[], bool] = lambda: False
    bar: Any = None  # a tqdm progress bar (update, set_postfix), or None
    log_points: set[int] = field(default_factory=set)  # batch indices after which to sync and log


def log_points(num_batches: int, per_epoch: int) -> set[int]:
    """Batch indices (0-based) after which train metrics are read, like the book's animator."""
    if per_epoch <= 0:
        return {num_batches - 1}
    every = max(1, num_batches // per_epoch)
    return {i for i in range(num_batches) if (i + 1) % every == 0} | {num_batches - 1}


def train_one_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    precision: Precision,
    *,
    epoch: int,
    global_step: int,
    hooks: LoopHooks,
    progress: EpochProgress | None = None,
    limit_batches: int | None = None,
    grad_clip_norm: float | None = None,
    dist_ctx: DistContext = DistContext(),
) -> dict:
    """Train for one epoch (or what remains of it, from ``progress``); returns the epoch's metrics.

    Metrics are over all ranks under DDP (one all-reduce per logging point). Raises
    :class:`TrainingDiverged` at the first logging point whose loss is not finite or too large.
    """
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    progress = progress or EpochProgress.zeros(loader.device)
    num_batches = len(loader) if limit_batches is None else min(limit_batches, len(loader))
    last_logged_loss: float | None = None
    interval_start = time.perf_counter()
    interval_examples = 0
    batches = loader.batches(epoch, start=progress.batches, limit=num_batches)
    for i, (x, y) in enumerate(batches, start=progress.batches):
        # x: (B, 1, S, S) float, y: (B,) int64, both on the device
        with precision.autocast():
            logits = model(x)  # (B, classes)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if dist_ctx.enabled:
            loss_to_step = loss * _shard_weight(loader, i, y.shape[0], dist_ctx)
        else:
            loss_to_step = loss  # no extra op in the single-process hot path
        _backward_and_step(loss_to_step, model, optimizer, precision, grad_clip_norm)
        if scheduler is not None:
            scheduler.step()
        global_step += 1
        with torch.no_grad():
            progress.loss_sum += loss.detach().float() * y.shape[0]
            progress.correct += (logits.argmax(dim=1) == y).sum()
        progress.count += y.shape[0]
        progress.batches = i + 1
        interval_examples += y.shape[0]
        if hooks.bar is not None:
            hooks.bar.update(1)
        if hooks.should_stop() and i not in hooks.log_points:
            break  # the sums so far go into the checkpoint; the resumed run logs this interval
        if i in hooks.log_points:
            loss_sum, correct, count = _global_sums(progress, dist_ctx)  # the interval's one host sync
            loss_value = loss_sum / count
            if _diverged(loss_value, hooks.divergence_loss):
                raise TrainingDiverged(global_step, epoch + (i + 1) / num_batches, loss_value,
                                       last_logged_loss, optimizer.param_groups[0]["lr"])
            last_logged_loss = loss_value
            now = time.perf_counter()
            metrics = {
                "step": global_step,
                "epoch": epoch + (i + 1) / num_batches,
                "train/loss": loss_value,
                "train/acc": correct / count,
                "lr": optimizer.param_groups[0]["lr"],
                "throughput/examples_per_sec": interval_examples / max(now - interval_start, 1e-9),
            }
            hooks.on_log(metrics)
            if hooks.bar is not None:
                hooks.bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{metrics['train/acc']:.3f}", refresh=False)
            interval_start, interval_examples = now, 0
            if hooks.should_stop():
                break
    loss_sum, correct, count = _global_sums(progress, dist_ctx)
    loss_value = loss_sum / max(count, 1)
    if _diverged(loss_value, hooks.divergence_loss):
        raise TrainingDiverged(global_step, epoch + 1, loss_value, last_logged_loss, optimizer.param_groups[0]["lr"])
    return {
        "step": global_step,
        "train/loss": loss_value,
        "train/acc": correct / max(count, 1),
        "examples": int(count),
        "complete": progress.batches >= num_batches,
        "progress": progress,
    }


def _shard_weight(loader: DeviceLoader, batch: int, local: int, ctx: DistContext) -> float:
    """DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the global
    batch makes that average the gradient of the global batch's mean loss, even for uneven shards."""
    global_n = min(loader.batch_size, loader.num_examples - batch * loader.batch_size)
    return local * ctx.world_size / global_n


def sums_over_ranks(loss_sum: torch.Tensor, correct: torch.Tensor, count: int, ctx: DistContext) -> torch.Tensor:
    """(loss sum, correct, examples) added up over all ranks: one (3,) float64 tensor, one all-reduce."""
    local = torch.stack([loss_sum.double(), correct.double(),
                         torch.tensor(float(count), dtype=torch.float64, device=loss_sum.device)])
    return all_sum(local, ctx)


def _global_sums(progress: EpochProgress, ctx: DistContext) -> tuple[float, float, int]:
    """(loss sum, correct, examples) of the epoch so far over all ranks; one host read."""
    loss_sum, correct, count = sums_over_ranks(progress.loss_sum, progress.correct, progress.count, ctx).tolist()
    return loss_sum, correct, int(count)


def _diverged(loss: float, limit: float | None) -> bool:
    return not math.isfinite(loss) or (limit is not None and loss > limit)


def _backward_and_step(loss, model, optimizer, precision: Precision, grad_clip_norm: float | None) -> None:
    scaler = precision.scaler
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        return
    loss.backward()
    if grad_clip_norm:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DeviceLoader, precision: Precision, limit_batches: int | None = None,
    dist_ctx: DistContext = DistContext(),
) -> dict:
    """Accuracy and mean loss on ``loader`` (read back once, at the end; summed over ranks)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    loss_sum = torch.zeros((), device=loader.device)
    count = 0
    for x, y in loader.batches(epoch=0, limit=limit_batches):
        with precision.autocast():
            logits = model(x)  # (B, classes)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        count += y.shape[0]
    loss_total, correct_n, n = sums_over_ranks(loss_sum, correct, count, dist_ctx).tolist()
    return {"test/acc": correct_n / max(n, 1), "test/loss": loss_total / max(n, 1), "examples": int(n)}


# --------------------------------------------------------------------------------------- speed options


@dataclass
class SpeedSettings:
    """The speed options a run ends up with, after ``auto`` values are decided for the device."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    fused_optimizer: bool = False
    tuning: dict = field(default_factory=dict)  # examples/sec of every candidate that autotune timed


def _time_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision, steps: int) -> float:
    """Seconds per training step of ``model`` on one batch (after one untimed step; one timed step
    when a step takes over half a second, so tuning a big network on a CPU stays short)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: timing only, weights stay as they are
    def step() -> None:
        with precision.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    step()
    synchronize(x.device)
    if time.perf_counter() - t0 > 0.5:
        steps = 1
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(x.device)
    return (time.perf_counter() - t0) / steps


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autotune(model: nn.Module, loader: DeviceLoader, device: torch.device, candidates,
             steps: int = 3) -> tuple[tuple[str, bool], dict]:
    """Time a few training steps of each (precision, channels_last) candidate on a copy of ``model``.

    Like cudnn.benchmark for the whole step: which is fastest depends on the network and the device
    (on a CPU with AMX, bf16 + channels_last is 1.7x faster for ResNet-18 at 96 pixels, while
    channels_last makes LeNet-BN's BatchNorm 2x slower), so it is measured rather than guessed.
    """
    x, y = next(loader.batches(epoch=0, limit=1))
    x, y = x[:128], y[:128]  # per-example speed settles by 128; bigger batches only make tuning slower
    timings = {}
    for precision, channels_last in candidates:
        trial = copy.deepcopy(model)
        xx = x
        if channels_last:
            trial = trial.to(memory_format=torch.channels_last)
            xx = x.contiguous(memory_format=torch.channels_last)
        seconds = _time_steps(trial, xx, y, Precision.create(precision, device), steps)
        timings[f"{precision}{'+channels_last' if channels_last else ''}"] = xx.shape[0] / seconds
    best = max(candidates, key=lambda c: timings[f"{c[0]}{'+channels_last' if c[1] else ''}"])
    return best, timings


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def resolve_speed(cfg: DictConfig, device: torch.device, model: nn.Module, loader: DeviceLoader,
                  deterministic: bool = False) -> SpeedSettings:
    """Turn the ``device`` group's values into settings; ``auto`` precision/layout are autotuned.

    Deterministic runs skip the timing (its verdict could differ between two runs): fp32, NCHW.
    """
    precision, channels_last = str(cfg.precision), cfg.channels_last
    if deterministic:
        precision = "fp32" if precision == "auto" else precision
        channels_last = False if str(channels_last) == "auto" else channels_last
    settings = SpeedSettings(compile=bool(cfg.compile))
    fused = cfg.get("fused_optimizer", False)
    settings.fused_optimizer = device.type == "cuda" if str(fused) == "auto" else bool(fused)
    if precision == "auto" or str(channels_last) == "auto":
        precisions = [precision] if precision != "auto" else (["fp32", "bf16"] if bf16_supported(device) else ["fp32"])
        layouts = [bool(channels_last)] if str(channels_last) != "auto" else [False, True]
        if device.type == "mps":
            layouts = [False]
        candidates = [(p, c) for p in precisions for c in layouts]
        (precision, channels_last), settings.tuning = autotune(model, loader, device, candidates)
        logger.info("autotune picked %s%s (examples/sec: %s)", precision, " + channels_last" if channels_last else "",
                    ", ".join(f"{k} {v:.0f}" for k, v in settings.tuning.items()))
    settings.precision, settings.channels_last = precision, bool(channels_last)
    return settings
