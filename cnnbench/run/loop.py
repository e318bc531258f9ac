"""The training loop: one epoch of training, one evaluation.

Metrics are summed in device tensors and read back (one host sync) only at the logging points, never
per batch; the book's loop calls ``float()`` on every batch's accuracy, which stalls a GPU each step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..confusion import confusion_counts
from ..data import DeviceLoader
from ..errors import TrainingDiverged
from ..speed.precision import Precision
from .distributed import SINGLE_PROCESS, DistContext, all_sum


@dataclass
class EpochProgress:
    """Sums of the epoch so far; device tensors so that adding to them never syncs."""

    loss_sum: torch.Tensor  # () float32: sum over examples of the cross-entropy
    correct: torch.Tensor  # () int64: correctly classified training examples
    count: int = 0  # examples seen (known on the host from batch sizes)
    batches: int = 0  # batches done in this epoch

    @classmethod
    def zeros(cls, device: torch.device) -> EpochProgress:
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))


@dataclass
class LoopHooks:
    """What the loop reports to and asks of its caller, at logging points and between steps."""

    # A mean cross-entropy above this (nats) counts as diverged even when finite: chance level is
    # ln(10) = 2.3, and sigmoid LeNets at huge learning rates sit at 1e4+ without ever reaching NaN.
    divergence_loss: float | None = None
    on_log: Callable[[dict], None] = lambda metrics: None
    should_stop: Callable[[], bool] = lambda: False
    after_step: list[Callable[[], None]] = field(default_factory=list)  # after each optimizer step (EMA...)
    bar: Any = None  # a tqdm progress bar (update, set_postfix), or None
    log_points: set[int] = field(default_factory=set)  # batch indices after which to sync and log


@dataclass
class EpochResult:
    """What one call of :func:`train_one_epoch` did: the epoch's metrics and where it stopped."""

    step: int  # optimizer steps done in the whole run, after this call
    loss: float  # mean training loss over the epoch's examples so far (all ranks)
    acc: float  # training accuracy over the same examples
    examples: int  # examples of the epoch so far, all ranks, earlier calls included
    complete: bool  # False when a stop request ended the epoch early
    progress: EpochProgress  # the sums to continue from when not complete

    def metrics(self) -> dict[str, float]:
        return {"train/loss": self.loss, "train/acc": self.acc}


@dataclass
class EvalResult:
    """Accuracy and mean loss over one evaluated split, and its confusion matrix when asked for."""

    acc: float
    loss: float
    examples: int
    confusion: torch.Tensor | None = None  # (C, C) int64 on the CPU: rows true class, columns predicted

    def metrics(self, split: str = "test") -> dict[str, float]:
        return {f"{split}/acc": self.acc, f"{split}/loss": self.loss}


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
    label_smoothing: float = 0.0,
    dist_ctx: DistContext = SINGLE_PROCESS,
) -> EpochResult:
    """Train for one epoch (or what remains of it, from ``progress``).

    Metrics are over all ranks under DDP (one all-reduce per logging point). Raises
    :class:`TrainingDiverged` at the first logging point whose loss is not finite or too large.
    """
    model.train()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    progress = progress or EpochProgress.zeros(loader.device)
    num_batches = loader.batches_per_epoch(limit_batches)
    interval = _Interval()
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
        backward_and_step(loss_to_step, model, optimizer, precision, grad_clip_norm)
        if scheduler is not None:
            scheduler.step()
        for after_step in hooks.after_step:  # plain calls: none may wait for the device
            after_step()
        global_step += 1
        with torch.no_grad():
            progress.loss_sum += loss.detach().float() * y.shape[0]
            progress.correct += (logits.argmax(dim=1) == y).sum()
        progress.count += y.shape[0]
        progress.batches = i + 1
        interval.examples += y.shape[0]
        if hooks.bar is not None:
            hooks.bar.update(1)
        if i in hooks.log_points:
            _log_interval(progress, interval, hooks, optimizer, dist_ctx, global_step, epoch + (i + 1) / num_batches)
        if hooks.should_stop():
            break  # the sums so far go into the checkpoint; the resumed run logs the unlogged rest
    loss_sum, correct, count = _global_sums(progress, dist_ctx)
    loss_value = loss_sum / max(count, 1)
    if _diverged(loss_value, hooks.divergence_loss):
        raise TrainingDiverged(global_step, epoch + 1, loss_value, interval.last_loss, optimizer.param_groups[0]["lr"])
    return EpochResult(step=global_step, loss=loss_value, acc=correct / max(count, 1), examples=int(count),
                       complete=progress.batches >= num_batches, progress=progress)


@dataclass
class _Interval:
    """The stretch of steps since the last logging point."""

    start: float = field(default_factory=time.perf_counter)
    examples: int = 0
    last_loss: float | None = None  # the last finite loss logged, for the divergence message


def _log_interval(progress: EpochProgress, interval: _Interval, hooks: LoopHooks, optimizer, dist_ctx: DistContext,
                  step: int, epoch: float) -> None:
    """At a logging point: the interval's one host sync, the divergence check, the record, the bar."""
    loss_sum, correct, count = _global_sums(progress, dist_ctx)
    loss = loss_sum / count
    lr = optimizer.param_groups[0]["lr"]
    if _diverged(loss, hooks.divergence_loss):
        raise TrainingDiverged(step, epoch, loss, interval.last_loss, lr)
    now = time.perf_counter()
    metrics = {
        "step": step,
        "epoch": epoch,
        "train/loss": loss,
        "train/acc": correct / count,
        "lr": lr,
        "throughput/examples_per_sec": interval.examples / max(now - interval.start, 1e-9),
    }
    hooks.on_log(metrics)
    if hooks.bar is not None:
        hooks.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{metrics['train/acc']:.3f}", refresh=False)
    interval.start, interval.examples, interval.last_loss = now, 0, loss


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


def backward_and_step(loss, model, optimizer, precision: Precision, grad_clip_norm: float | None) -> None:
    """Backward pass, optional clipping of the gradient's global 2-norm, optimizer step (fp16: scaled)."""
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
    dist_ctx: DistContext = SINGLE_PROCESS, num_classes: int | None = None, tta: bool = False,
) -> EvalResult:
    """Accuracy and mean loss on ``loader`` (read back once, at the end; summed over ranks). With
    ``num_classes``, also the confusion matrix: one bincount per batch, summed on the device.

    ``tta``: the logits are the mean of the image's and its mirror image's (flip test-time augmentation).
    """
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    loss_sum = torch.zeros((), device=loader.device)
    confusion = None if num_classes is None else torch.zeros(
        (num_classes, num_classes), dtype=torch.long, device=loader.device)
    count = 0
    for x, y in loader.batches(epoch=0, limit=limit_batches):
        with precision.autocast():
            logits = model(x)  # (B, classes)
            if tta:
                logits = (logits + model(x.flip(-1))) / 2
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(dim=1)  # (B,)
        correct += (pred == y).sum()
        if confusion is not None:
            confusion += confusion_counts(y, pred, num_classes)
        count += y.shape[0]
    loss_total, correct_n, n = sums_over_ranks(loss_sum, correct, count, dist_ctx).tolist()
    if confusion is not None:
        confusion = all_sum(confusion, dist_ctx).cpu()
    return EvalResult(acc=correct_n / max(n, 1), loss=loss_total / max(n, 1), examples=int(n), confusion=confusion)
