"""A run's ``summary.json``: what it reached or why it stopped, and the lines the console ends with.

(The ``cnnbench summary`` command, which prints a network's layer shapes, is :mod:`cnnbench.models.stats`.)
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import shlex
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..confusion import class_names, per_class_accuracy
from ..devices import device_name
from ..errors import TrainingDiverged
from ..fmt import human
from ..machine import machine_info, source_info, version_line
from ..runfolder.names import BEST_CHECKPOINT
from .build import Run
from .selection import objective_name, objective_value
from .spec import RunSpec
from .state import RunState

logger = logging.getLogger("cnnbench.run.train")  # the closing lines belong to the train command's log


@dataclass(frozen=True)
class Asked:
    """What a run was asked for, as summary.json records it: from its spec (:func:`asked_of`), or, for a
    run that failed before its spec existed, from the raw config at the edge (``run.train``)."""

    model: str
    dataset: str
    resize: int | None  # the input side (pixels)
    epochs: int
    device: str  # device.type
    precision: str  # device.precision as asked (the run's own once built)
    seed: int
    deterministic: bool
    objective: str | None  # trainer.objective, checked (None: not a valid one)
    classes: list[str] | None = None  # the class names (None: unknown)


def asked_of(spec: RunSpec) -> Asked:
    """What ``spec`` asks for, in summary.json's terms."""
    trainer, device = spec.trainer, spec.device
    return Asked(model=spec.network.name, dataset=spec.data.name, resize=_safe(lambda: spec.network.side),
                 epochs=trainer.epochs, device=str(device.type), precision=str(device.precision), seed=trainer.seed,
                 deterministic=trainer.deterministic, objective=_safe(lambda: objective_name(trainer)),
                 classes=_safe(lambda: class_names(spec.sections["dataset"])))


def summarize(run: Run | None, asked: Asked, run_dir: Path, status: str, wall: float,
              overrides: list[str], error: BaseException | None = None) -> dict[str, Any]:
    """The summary.json content for any outcome (``run`` is None when set-up itself failed); summary.json's
    ``book`` is added by the caller (it compares the whole config)."""
    s = run.state if run is not None else RunState()
    summary: dict[str, Any] = {
        "status": status,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "traceback": None if error is None or isinstance(error, TrainingDiverged)
        else "".join(traceback.format_exception(error)),
        "model": asked.model,
        "network": _safe(lambda: run.spec.network.record(run.raw_model)) if run else None,  # module file, digest
        "dataset": asked.dataset,
        "resize": asked.resize,
        "epochs": asked.epochs,
        "epochs_completed": s.epoch,
        "steps": s.step,
        "train/loss": s.last_train.get("train/loss"),
        "train/acc": s.last_train.get("train/acc"),
        "val/acc": s.last_eval.get("val/acc"),
        "val/loss": s.last_eval.get("val/loss"),
        "test/acc": s.last_eval.get("test/acc"),
        "test/loss": s.last_eval.get("test/loss"),
        # The checkpoint chosen by the monitored metric (best.pt), and that same checkpoint's test
        # accuracy; None without a monitor: then nothing was chosen and the final epoch is the result.
        "monitor": run.monitor.name if run and run.monitor else None,
        "best/epoch": s.best_epoch,
        "best/val_acc": s.best_eval.get("val/acc"),
        "best/val_loss": s.best_eval.get("val/loss"),
        "best/test_acc": s.best_eval.get("test/acc"),
        "best/test_loss": s.best_eval.get("test/loss"),
        # What the run offers a searching sweep (trainer.objective) and its value: that checkpoint's figure.
        "objective": asked.objective,
        "stopped_early": s.stop_reason is not None,
        "stop_reason": s.stop_reason,
        "test/per_class_acc": _safe(lambda: per_class_accuracy(s.test_confusion, asked.classes))
        if s.test_confusion else None,
        "test/confusion": s.test_confusion,  # (C, C) counts, rows true class: the tracker draws it
        "time_to_target_s": s.time_to_target_s,
        "wall_time_s": wall,
        "train_time_s": s.train_time_s,
        "examples_per_sec": s.train_examples / s.train_time_s if s.train_time_s else None,
        "params": run.params if run else None,
        "flops_per_image": run.flops if run else None,
        "device": device_name(run.device) if run else asked.device,
        "precision": run.speed.precision if run else asked.precision,
        "speed": dataclasses.asdict(run.speed) if run else None,
        "seed": asked.seed,
        "deterministic": asked.deterministic,
        "warnings": s.warnings,
        "resumes": s.resumes,  # one record per resume: time, overrides, changed settings, forced or not
        "overrides": overrides,
        "run_dir": str(run_dir),
        "world_size": run.dist.world_size if run else 1,
        "backend": run.dist.backend if run else None,
        "torch_version": torch.__version__,
        "cnnbench_version": __version__,
        **source_commit(),
        "python_version": platform.python_version(),
        # what a reader needs to repeat the run: host, CPU, GPU and driver, cnnbench's commit, package versions
        "machine": _safe(lambda: machine_info(run.device, run.threads) if run else machine_info(torch.device("cpu"))),
        # device.num_threads=auto: the counts the run followed (policy, most, changes, seconds at each count)
        "threads": run.follower.record() if run is not None and run.follower is not None else None,
    }
    summary["objective_value"] = objective_value(summary) if summary["objective"] else None
    if isinstance(error, TrainingDiverged):
        summary.update({"diverged_at_step": error.step, "diverged_loss": error.loss,
                        "last_finite_loss": error.last_finite_loss})
    return summary


def source_commit() -> dict[str, Any]:
    """``source_commit`` (the git commit of cnnbench's code: the checkout's, or the one an installed wheel was
    built from) and ``source_dirty`` (its files differed from that commit); None when neither is known."""
    info = source_info()
    return {"source_commit": info["commit"], "source_dirty": info["dirty"]}


def book_line(book: dict[str, Any]) -> str:
    """'the book (D2L 6.6, two editions): train loss 0.473 (0.469-0.472), train acc 0.822 (0.823-0.826),
    test acc 0.819 (0.779-0.791, above): reproduced'."""
    parts = []
    for key, label in (("train_loss", "train loss"), ("train_acc", "train acc"), ("test_acc", "test acc")):
        item = book[key]
        low, high = item["book"]
        where = item.get("position") or ("ok" if item["ok"] else "off")
        parts.append(f"{label} {item['value']:.3f} ({low:.3f}-{high:.3f}, {where})")
    verdict = "reproduced" if book["reproduced"] else "not reproduced"
    return f"the book (D2L {book.get('section')}, {len(book['editions'])} editions): {', '.join(parts)}: {verdict}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # the summary of a failed run must never fail itself
        return None


def thread_words(run: Run) -> str:
    """"2 threads", or with device.num_threads=auto "1 thread (follows the load: 1 of 2 cores free)"."""
    count = _count(run.threads, "thread")
    if run.follower is None:
        return count
    return f"{count} (follows the load: {run.threads} of {run.follower.cores} cores free)"


def header_lines(run: Run, resumed_at_epoch: int | None) -> list[str]:
    """What a run is, said once at its start: cnnbench's version, network, data, device and precision,
    schedule, folder."""
    spec, speed = run.spec, run.speed
    network, trainer, optimizer = spec.network, spec.trainer, spec.sections["optimizer"]
    side = network.side
    sizes = [f"{len(run.train_loader.labels):,} train"]
    if run.val_loader is not None:
        sizes.append(f"{len(run.val_loader.labels):,} validation")
    sizes.append(f"{len(run.test_loader.labels):,} test")
    tuned = _tuning_words(speed.autotune or {})
    extras = [name for name, on in (("channels-last", speed.channels_last), ("torch.compile", speed.compile),
                                    (f"fused CPU kernels on {len(speed.fused_kernels)} layers", speed.fused_kernels),
                                    (f"GEMM weight gradients on {len(speed.gemm_weight_grads)} layers",
                                     speed.gemm_weight_grads))
              if on]
    threads = f", {thread_words(run)}" if run.device.type == "cpu" else ""
    world = f" x {run.dist.world_size} processes" if run.dist.world_size > 1 else ""
    scheduler = spec.sections.get("scheduler")
    schedule = scheduler.name if scheduler is not None else "none"
    lines = [
        version_line(),
        f"{network.label()}: {human(run.params)} parameters, {human(run.flops)} FLOPs per image, "
        f"{side}x{side} input, {_count(network.in_channels, 'channel')}, {network.num_classes} classes",
        f"data: {spec.data.name}, {', '.join(sizes)} images",
        f"device: {device_name(run.device)}{threads}{world}, {speed.precision}{tuned}"
        + "".join(f", {e}" for e in extras),
        f"training: {_count(trainer.epochs, 'epoch')} of {_count(run.batches_per_epoch, 'batch', 'batches')} of "
        f"{trainer.batch_size}, "
        f"{optimizer.name} lr {optimizer.lr:g}, schedule {schedule}, seed {trainer.seed}",
        f"run folder: {run.run_dir}" + (f" (continuing after epoch {resumed_at_epoch})"
                                        if resumed_at_epoch is not None else ""),
        f"curves: tensorboard --logdir {shlex.quote(str(run.run_dir))}",
    ]
    return lines


def _tuning_words(record: dict) -> str:
    """Where the speed settings came from (cnnbench.speed.decisions' record), in the header's words."""
    if record.get("source") == "cache":
        return " (start-up timing kept from an earlier run)"
    if record.get("source") == "timed":
        if record.get("file"):
            return " (timed at start-up, kept for later runs)"
        if record.get("not_kept") == "load":
            return f" (timed at start-up beside {record['others_cores']:.1f} busy cores: not kept)"
        return " (timed at start-up)"
    return ""


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """1 epoch, 3 epochs; 2 batches (``plural``)."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def closing_lines(summary: dict[str, Any]) -> None:
    """The book's closing line (loss and accuracies; examples/sec), then where everything went."""
    if summary["status"] == "completed":
        logger.info("loss %.3f, train acc %.3f, test acc %.3f, %.1f examples/sec on %s",
                    summary["train/loss"], summary["train/acc"], summary["test/acc"],
                    summary["examples_per_sec"] or 0.0, summary["device"])
        if summary["best/epoch"] is not None:
            logger.info("best checkpoint by %s: epoch %d, val acc %s, test acc %s (%s)", summary["monitor"],
                        summary["best/epoch"], _fmt(summary["best/val_acc"]), _fmt(summary["best/test_acc"]),
                        BEST_CHECKPOINT)
        if summary["stop_reason"]:
            logger.info("%s", summary["stop_reason"])
        if summary.get("book"):
            logger.info("%s", book_line(summary["book"]))
    elif summary["error"]:
        logger.error("run %s: %s", summary["status"], summary["error"])
    else:
        logger.warning("run %s", summary["status"])
    if summary.get("resume_command"):  # interrupted, or a failed write (full disk): its last checkpoint is kept
        when = "" if summary["status"] == "interrupted" else " once the disk has room"
        logger.warning("continue it (%s done)%s with: %s", _count(summary["resumable_from_epoch"], "epoch"), when,
                       summary["resume_command"])
    logger.info("run folder: %s", summary["run_dir"])
