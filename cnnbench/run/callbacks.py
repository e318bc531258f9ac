"""The epoch loop's concerns as small objects, called at named points of :func:`cnnbench.run.train.run_epochs`.

Points: ``on_epoch_start(epoch)`` before an epoch's first step, the step callbacks (:attr:`Callback.after_step`,
each a plain call after every optimizer step, so never a device-to-host wait), ``on_epoch_end(end)`` after an
epoch's last step, in list order: evaluation, selection (best.pt, early stopping), the target accuracy, the
epoch's record and line, the chance warning, last.pt. Each callback's saved state is the fields of the run's
:class:`~cnnbench.run.state.RunState` it names in ``OWNS`` (checkpoints carry them there, so a checkpoint of
an older cnnbench resumes unchanged): ``state_dict()`` and ``load_state_dict()`` read and write them.

A new concern (a profiler, a tracker's own picture) is one class here or in its own module, put into the
list by :func:`epoch_callbacks`.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..runfolder.log import RunLogger
from ..runfolder.names import BEST_CHECKPOINT, CHECKPOINT
from .checkpoint import checkpoint_state, save_checkpoint
from .loop import EpochResult, evaluate

if TYPE_CHECKING:
    from .build import Run

logger = logging.getLogger(__name__)


@dataclass
class EpochEnd:
    """What an epoch's end hands its callbacks: the epoch (1-based, done), its training result and seconds,
    the record logged for it (callbacks add to it), and whether it was evaluated."""

    epoch: int
    out: EpochResult
    elapsed: float  # seconds inside train_one_epoch
    record: dict[str, Any] = field(default_factory=dict)
    evaluated: bool = False


class Callback:
    """A concern of the epoch loop. Subclasses override the points they use."""

    OWNS: tuple[str, ...] = ()  # RunState fields that hold this callback's saved state

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_epoch_start(self, epoch: int) -> None:
        """Before the first step of ``epoch`` (0-based)."""

    def on_epoch_end(self, end: EpochEnd) -> None:
        """After the epoch's last step."""

    after_step: Callable[[], None] | None = None  # after every optimizer step; no device-to-host wait

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self.run.state, name) for name in self.OWNS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.OWNS:
            if name in state:
                setattr(self.run.state, name, state[name])


# ----------------------------------------------------------------------------------------- per step


class EmaUpdate(Callback):
    """The exponential moving average of the weights (``trainer.ema.decay``), after every step."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.after_step = lambda: run.ema.update_parameters(run.raw_model)


class FollowLoad(Callback):
    """device.num_threads=auto: the thread count follows the cores other programs leave free
    (:class:`cnnbench.speed.load.ThreadFollower`: a clock read per step, the load read once a second)."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.after_step = run.follower.tick


class Progress(Callback):
    """A tqdm bar per epoch (``trainer.progress_bar``: auto shows it on a terminal)."""

    def __init__(self, run: Run, shown: Any) -> None:
        super().__init__(run)
        self.shown = sys.stderr.isatty() if str(shown) == "auto" else bool(shown)
        self.bar: Any = None

    def on_epoch_start(self, epoch: int) -> None:
        from tqdm.auto import tqdm

        partial = self.run.state.partial
        epochs = self.run.spec.trainer.epochs
        self.bar = tqdm(total=self.run.batches_per_epoch, initial=int(partial["batches"]) if partial else 0,
                        desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=not self.shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------------- per epoch's end


class Evaluation(Callback):
    """Every ``trainer.eval_every`` epochs and after the last one: each split evaluated (the EMA's weights
    when there is one), into the record and ``state.last_eval``."""

    OWNS = ("last_eval", "test_confusion")

    def due(self, epoch: int) -> bool:
        every, epochs = self.run.spec.trainer.eval_every, self.run.spec.trainer.epochs
        return (every > 0 and epoch % every == 0) or epoch == epochs

    def on_epoch_end(self, end: EpochEnd) -> None:
        if not self.due(end.epoch):
            return
        run = self.run
        run.state.last_eval = evaluate_splits(run)
        run.state.wall_time_s = _wall(run)  # evaluation included
        end.record.update(run.state.last_eval)
        end.evaluated = True


def evaluate_splits(run: Run) -> dict[str, float]:
    """val/acc, val/loss (with a validation split), test/acc, test/loss: each split evaluated on the
    device, summed over ranks. With an EMA of the weights these are the EMA's (the model the run
    reports and selects), and the trained weights' own figures are ``raw/val/acc``, ``raw/test/acc``..."""
    metrics = _evaluate_model(run, run.ema if run.ema is not None else run.model, prefix="")
    if run.ema is not None:
        metrics.update(_evaluate_model(run, run.model, prefix="raw/"))
    return metrics


def _evaluate_model(run: Run, model: torch.nn.Module, prefix: str) -> dict[str, float]:
    trainer = run.spec.trainer
    metrics: dict[str, float] = {}
    for split, loader in (("val", run.val_loader), ("test", run.test_loader)):
        if loader is None:
            continue
        # The reported model's test evaluation also counts a confusion matrix (one bincount per batch on
        # the device, read with the sums): the summary's per-class accuracy and TensorBoard's picture
        # come from the last one.
        counted = split == "test" and not prefix
        result = evaluate(model, loader, run.precision, trainer.limit_eval_batches, run.dist, tta=trainer.tta,
                          num_classes=run.spec.data.num_classes if counted else None)
        if counted and result.confusion is not None:
            run.state.test_confusion = result.confusion.tolist()
        metrics.update({f"{prefix}{k}": v for k, v in result.metrics(split).items()})
    return metrics


class Selection(Callback):
    """The monitored metric: best.pt when it improves, early stopping when it stops improving."""

    OWNS = ("best_epoch", "best_value", "best_eval", "evals_since_best", "stop_reason")

    def on_epoch_end(self, end: EpochEnd) -> None:
        run = self.run
        if end.evaluated and run.monitor is not None and run.monitor.update(run.state, run.state.last_eval, end.epoch):
            save(run, BEST_CHECKPOINT)


class TargetStop(Callback):
    """``trainer.target_acc``: stop once the monitored accuracy (test/acc without a monitor) reaches it,
    recording the wall time it took from the start, evaluations included."""

    OWNS = ("time_to_target_s", "stop_reason")

    def on_epoch_end(self, end: EpochEnd) -> None:
        if end.evaluated:
            check_target(self.run, end.epoch)


def check_target(run: Run, epoch: int) -> None:
    """Stop the run (``state.stop_reason``) when the target accuracy is reached at ``epoch``."""
    target = run.spec.trainer.target_acc
    if target is None or run.state.time_to_target_s is not None:
        return
    metric = run.monitor.name if run.monitor is not None and run.monitor.higher_is_better else "test/acc"
    value = run.state.last_eval.get(metric)
    if value is not None and value >= float(target):
        run.state.time_to_target_s = run.state.wall_time_s
        run.state.stop_reason = (f"reached trainer.target_acc={float(target):g}: {metric} {value:.4f} at epoch "
                                 f"{epoch}, {run.state.wall_time_s:.1f} s from the start")


class EpochLog(Callback):
    """The epoch's record to metrics.jsonl, TensorBoard and every tracker (through the run logger), and its
    one line in the log."""

    def __init__(self, run: Run, rlog: RunLogger) -> None:
        super().__init__(run)
        self.rlog = rlog

    def on_epoch_end(self, end: EpochEnd) -> None:
        record, out = end.record, end.out
        self.rlog.log("epoch", record)
        logger.info(
            "epoch %d/%d: loss %.3f, train acc %.3f%s%s, %.0f examples/sec", end.epoch, self.run.spec.trainer.epochs,
            out.loss, out.acc, f", val acc {record['val/acc']:.3f}" if "val/acc" in record else "",
            f", test acc {record['test/acc']:.3f}" if "test/acc" in record else "",
            record["throughput/examples_per_sec"],
        )


class ChanceWarning(Callback):
    """Warn when the loss stays at (or above) a uniform guess's, ln(classes), with chance accuracy, for
    ``trainer.chance_patience`` epochs."""

    OWNS = ("chance_epochs",)

    def on_epoch_end(self, end: EpochEnd) -> None:
        run, out = self.run, end.out
        classes = run.spec.data.num_classes
        at_chance = out.loss > math.log(classes) - 0.1 and out.acc < 2 / classes
        run.state.chance_epochs = run.state.chance_epochs + 1 if at_chance else 0
        patience = run.spec.trainer.chance_patience
        if patience and run.state.chance_epochs == patience:
            msg = (f"train loss has stayed at chance level (~ln {classes} = {math.log(classes):.3f}, accuracy "
                   f"~{1 / classes:.2f}) for {patience} epochs: the network is not learning; try another "
                   "learning rate (optimizer.lr=...)")
            logger.warning(msg)
            run.state.warnings.append(msg)


class Checkpoint(Callback):
    """last.pt after every epoch (``trainer.checkpoint``), atomically, rank 0 only."""

    def on_epoch_end(self, end: EpochEnd) -> None:
        if self.run.spec.trainer.checkpoint:
            save(self.run, CHECKPOINT)


def save(run: Run, name: str) -> None:
    """Write a checkpoint of the run as it is now (rank 0 only; atomically)."""
    if run.dist.is_main:
        save_checkpoint(run.run_dir / name, checkpoint_state(run))


def _wall(run: Run) -> float:
    import time

    return time.perf_counter() - run.clock_start


def epoch_callbacks(run: Run, rlog: RunLogger) -> list[Callback]:
    """The run's callbacks, in the order they are called at each point."""
    callbacks: list[Callback] = [Progress(run, run.spec.trainer.progress_bar)]
    if run.ema is not None:
        callbacks.append(EmaUpdate(run))
    if run.follower is not None:
        callbacks.append(FollowLoad(run))
    callbacks += [Evaluation(run), Selection(run), TargetStop(run), EpochLog(run, rlog), ChanceWarning(run),
                  Checkpoint(run)]
    return callbacks
