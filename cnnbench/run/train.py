"""``cnnbench train``: one run, from a composed config to a complete run folder.

``train(cfg, run_dir)`` is the plain function (tests call it after ``compose``); the command line's
``@hydra.main`` wrapper is :func:`cnnbench.commands.launch.hydra_main`. A run reads top to bottom:

0. ``check_resume`` (:mod:`cnnbench.run.resume`) and the run folder's lock (:mod:`cnnbench.runfolder.lock`);
1. ``build_run`` (:mod:`cnnbench.run.build`): device, data, model, optimizer, schedule;
2. ``restore`` (:mod:`cnnbench.run.checkpoint`) when resuming;
3. ``run_epochs``: ``train_one_epoch`` then ``finish_epoch`` (evaluate, select, log, checkpoint) per
   epoch, until the last epoch or early stopping;
4. ``summarize`` (:mod:`cnnbench.run.summary`): summary.json and the closing lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig

from ..book.results import book_comparison
from ..confusion import class_names
from ..data.sources import SettledData, settle_dataset
from ..errors import CnnbenchError, RunFileWriteError, TrainingDiverged
from ..runfolder.disk import DISK_ERRNOS, low_space_warning, os_error_in, resume_fields, writing
from ..runfolder.lock import run_folder_lock
from ..runfolder.log import (
    TB_CONFUSION,
    RunLogger,
    current_swept_keys,
    hparams_of,
    trim_metrics,
    write_json_atomic,
)
from ..runfolder.names import CHECKPOINT, HYDRA_DIR, SUMMARY
from ..speed import collector
from ..tracking.trackers import Trackers, open_trackers
from .build import Run, build_run
from .callbacks import Callback, EpochEnd, Progress, epoch_callbacks
from .checkpoint import checkpoint_state, resolve_resume, save_checkpoint
from .distributed import DistContext, any_rank, init_from_env
from .loop import EpochProgress, EpochResult, LoopHooks, log_points, sums_over_ranks, train_one_epoch
from .memory import explain_oom
from .resume import ResumePlan, check_resume, resume_run, write_hydra_record
from .selection import TEST_SET_WARNING, objective_name
from .signals import GracefulStop
from .spec import RunSpec, trainer_section
from .summary import Asked, asked_of, closing_lines, header_lines, summarize
from .validate import validate_config

logger = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path | str | None = None, spec: RunSpec | None = None) -> dict:
    """Train the configured network; write the run folder; return the summary. ``spec``: ``cfg`` checked
    already (the command line's pre-launch check), so that nothing is settled or checked again.

    Two refusals come before anything in the folder is touched, as exceptions: another live process
    writes the folder (:class:`RunFolderInUse`), or the checkpoint to resume was written with settings
    that change what its epochs mean (:class:`ResumeRefused`). After that, runtime failures (divergence,
    exceptions, a full disk, out of memory, signals) never escape: they are recorded in the returned
    summary and in ``summary.json`` with their status, so a sweep can go on with the next job.
    """
    # what only the data knows, into the config it records; bad data refused here
    settled = spec.settled if spec is not None else settle_dataset(cfg)
    ctx = init_from_env(str(cfg.device.type))  # a single process unless started by torchrun
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    resume_from = resolve_resume(spec.trainer.resume if spec is not None else cfg.trainer.resume, run_dir)
    plan = check_resume(cfg, resume_from)
    with run_folder_lock(run_dir, enabled=ctx.is_main):  # only rank 0 writes the run folder
        return _train(cfg, run_dir, ctx, resume_from, plan, spec, settled)


def _train(cfg: DictConfig, run_dir: Path, ctx: DistContext, resume_from: Path | None,
           plan: ResumePlan | None, spec: RunSpec | None = None, settled: SettledData | None = None) -> dict:
    """``train`` inside the run folder's lock."""
    main = ctx.is_main  # only rank 0 writes the run folder
    overrides = job_overrides()
    start = time.perf_counter()
    run: Run | None = None
    rlog: RunLogger | None = None
    trackers = Trackers()  # beyond the run folder's own record (logger=mlflow, logger=wandb)
    status, error = "failed", None
    with GracefulStop() as stop, thread_count_kept():
        try:
            record_dir = _start_records(cfg, run_dir) if main else None
            if main:  # before the build: a run that fails to start is tracked too
                trackers = open_trackers(cfg, run_dir, overrides, resuming=resume_from is not None,
                                         sections=spec.trackers if spec is not None else None)
            spec = spec if spec is not None else validate_config(cfg, settled)  # checked here when not before
            run = build_run(spec, run_dir, ctx)
            _warn_low_space(run)
            if resume_from is not None:
                resume_run(run, plan or resume_from, overrides, record_dir)
                if main:
                    trim_metrics(run_dir, run.state.step)
            if main:
                for text in header_lines(run, run.state.epoch if resume_from is not None else None):
                    logger.info("%s", text)
            # The run's clock: wall seconds since it first started, earlier segments of a resumed run included.
            run.clock_start = time.perf_counter() - run.state.wall_time_s
            trackers.start()  # after the build's autotuning: the trackers' set-up would skew its timings
            rlog = RunLogger(run_dir, enabled=main, purge_step=run.state.step + 1 if resume_from else None,
                             tracker=trackers)
            if resume_from is None:
                rlog.log_config(cfg)
            warn_test_set_selection(run)
            status = run_epochs(run, rlog, stop)
            if run.state.test_confusion:
                names = class_names(run.spec.sections["dataset"] if run.spec else cfg.dataset)
                rlog.log_confusion(TB_CONFUSION, torch.tensor(run.state.test_confusion), names, run.state.step)
            if status == "interrupted":
                checkpoint_on_interrupt(run)
        except TrainingDiverged as exc:  # reported by the closing lines
            status, error = "diverged", exc
        except CnnbenchError as exc:  # a problem the user can fix: its one sentence, in the closing lines
            status, error = "failed", exc
        except Exception as exc:  # any failure of this job is recorded, not raised (sweeps go on)
            status, error = "failed", _user_error(exc, run.spec if run else spec, run) or exc
            if error is exc:
                logger.error("run failed: %s: %s", type(exc).__name__, exc, exc_info=True)
    spec = run.spec if run is not None and run.spec is not None else spec
    asked = asked_of(spec) if spec is not None else _asked(cfg)
    summary = summarize(run, asked, run_dir, status, time.perf_counter() - start, overrides, error)
    summary["book"] = _book(cfg, summary)
    if rlog is not None:
        error = _close_log(rlog, cfg, overrides, summary) or error
    summary["warnings"] += trackers.warnings  # a tracker that failed during the run: summary.json says so
    summary = _finish(summary, run_dir, main, overrides, error)
    trackers.finish(summary)  # after summary.json is written: it is uploaded
    return summary


def _asked(cfg: DictConfig) -> Asked:
    """What a run that failed before its spec existed was asked for, from the raw config (it may be the
    reason it failed: a value that cannot be read is left out, None)."""
    def safe(fn: Callable) -> object:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - the summary of a failed run must never fail itself
            return None

    from ..models.configured import image_size

    trainer = cfg.trainer
    return Asked(model=str(cfg.model.name), dataset=str(cfg.dataset.name), resize=safe(lambda: image_size(cfg)),
                 epochs=int(trainer.epochs), device=str(cfg.device.type), precision=str(cfg.device.precision),
                 seed=int(trainer.seed), deterministic=bool(trainer.deterministic),
                 objective=safe(lambda: objective_name(trainer_section(cfg))))


def _book(cfg: DictConfig, summary: dict) -> dict | None:
    """summary.json's ``book``: a d2l_* recipe's run beside the book's figures (None otherwise)."""
    try:
        return book_comparison(cfg, summary)
    except Exception:  # noqa: BLE001 - the summary of a failed run must never fail itself
        return None


def _start_records(cfg: DictConfig, run_dir: Path) -> str | None:
    """Hydra's record of this start and a first summary.json; the record's folder (relative)."""
    with writing(run_dir / HYDRA_DIR):
        record_dir = write_hydra_record(run_dir, cfg)
    write_json_atomic(run_dir / SUMMARY, {"status": "running", "model": cfg.model.name})
    return record_dir


def _warn_low_space(run: Run) -> None:
    """Warn at the start when the disk holds fewer than a few checkpoints (weights + optimizer state)."""
    if run.spec.trainer.checkpoint and run.dist.is_main:
        param_bytes = sum(t.numel() * t.element_size() for t in run.raw_model.state_dict().values())
        warning = low_space_warning(run.run_dir, 3 * param_bytes)  # weights and up to two optimizer moments
        if warning:
            run.state.warnings.append(warning)


def _user_error(exc: Exception, spec: RunSpec | None, run: Run | None) -> CnnbenchError | None:
    """One sentence for the failures a user can act on: out of memory, a failed write."""
    memory = explain_oom(exc, spec, run.device if run else None, run.dist.world_size if run else 1)
    if memory is not None:
        return memory
    os_error = os_error_in(exc)  # a write that no writer named (the writers raise RunFileWriteError)
    if os_error is not None and os_error.errno in DISK_ERRNOS and os_error.filename:
        return RunFileWriteError(Path(os.fsdecode(os_error.filename)), os_error)
    return None


def _close_log(rlog: RunLogger, cfg: DictConfig, overrides: list[str], summary: dict) -> CnnbenchError | None:
    """HParams for a completed run, then close the event files; a failed write is returned, not raised."""
    try:
        if summary["status"] == "completed":
            swept = current_swept_keys()  # a sweep's varied settings: first in the HParams table
            rlog.log_hparams(hparams_of(cfg, overrides, swept), swept)
        rlog.close()
    except RunFileWriteError as exc:
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        return exc
    return None


def _finish(summary: dict, run_dir: Path, main: bool, overrides: list[str], error: BaseException | None) -> dict:
    """Write summary.json and the closing lines; a run stopped by a failed write says how to resume."""
    if not main:
        return summary
    stopped_early = summary["status"] == "interrupted" and (run_dir / CHECKPOINT).is_file()
    if isinstance(error, RunFileWriteError) or stopped_early:
        summary.update(resume_fields(run_dir))
    try:
        write_json_atomic(run_dir / SUMMARY, summary)
    except RunFileWriteError as exc:
        if not isinstance(error, RunFileWriteError):
            summary.update(status="failed", error=f"{type(exc).__name__}: {exc}", **resume_fields(run_dir))
        logger.error("%s", exc)
    closing_lines(summary)
    return summary


@contextlib.contextmanager
def thread_count_kept() -> Iterator[None]:
    """device.num_threads is process-wide: give the caller (a test, a notebook) its setting back."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def default_run_dir(cfg: DictConfig) -> Path:
    """The Hydra job's output folder, or a fresh timestamped folder when called outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    return Path("outputs") / f"{stamp}_{cfg.model.name}"


def job_overrides() -> list[str]:
    """The command line's overrides of this job (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


# ------------------------------------------------------------------------------------------ the loop


def run_epochs(run: Run, rlog: RunLogger, stop: GracefulStop,
               callbacks: list[Callback] | None = None) -> str:
    """Train epoch after epoch; returns "completed" or "interrupted". ``callbacks``: the concerns called at
    each epoch's start and end and after each step (:func:`cnnbench.run.callbacks.epoch_callbacks`)."""
    trainer = run.spec.trainer
    callbacks = callbacks if callbacks is not None else epoch_callbacks(run, rlog)
    progress = next((c for c in callbacks if isinstance(c, Progress)), None)
    n_batches = run.batches_per_epoch
    collector.resume()  # the command's start is over: collect once, freeze what lives on (cnnbench.speed.collector)
    while run.state.epoch < trainer.epochs and not run.state.stop_reason:  # a stopped run stays stopped on resume
        epoch = run.state.epoch
        partial = _restore_partial(run)
        done_before = partial.count if partial else 0  # examples of this epoch trained before a resume
        for callback in callbacks:
            callback.on_epoch_start(epoch)
        hooks = LoopHooks(
            on_log=lambda m: rlog.log("train", m),
            should_stop=stop_poll(stop, run),
            after_step=[c.after_step for c in callbacks if c.after_step is not None],
            bar=progress.bar if progress is not None else None,
            log_points=log_points(n_batches, trainer.logs_per_epoch),
            divergence_loss=trainer.divergence_loss,
        )
        t0 = time.perf_counter()
        try:
            out = train_one_epoch(
                run.model, run.train_loader, run.optimizer, run.scheduler, run.precision,
                epoch=epoch, global_step=run.state.step, hooks=hooks, progress=partial,
                limit_batches=trainer.limit_train_batches, grad_clip_norm=trainer.grad_clip_norm,
                label_smoothing=trainer.label_smoothing, dist_ctx=run.dist,
            )
        finally:
            if progress is not None:
                progress.close()
        elapsed = time.perf_counter() - t0
        run.state.step = out.step
        run.state.train_time_s += elapsed
        # this call's examples (a resumed epoch: its rest); ``partial`` is the loop's progress, counted up in place
        trained = out.examples - done_before
        run.state.train_examples += trained
        if not out.complete:
            run.state.partial = _partial_as_checkpoint_data(out.progress, run.dist)
            return "interrupted"
        run.state.partial = None
        finish_epoch(run, callbacks, out, elapsed, trained)
        if run.state.stop_reason:  # early stopping: the same decision on every rank (same global sums)
            logger.info("%s", run.state.stop_reason)
            return "completed"
        if any_rank(stop.requested, run.dist, run.device):  # all ranks leave after the same epoch
            return "interrupted"
    return "completed"


def finish_epoch(run: Run, callbacks: list[Callback], out: EpochResult, elapsed: float, trained: int) -> None:
    """The epoch's record (train metrics, speed), then each callback's end of epoch in order: evaluate
    (when due), select (best.pt, early stopping), the target, log the record, the chance check, last.pt.
    ``trained``: the examples of this process's ``elapsed`` seconds (an epoch resumed mid-way: only its rest,
    so its speed is not the whole epoch's examples over the rest's time)."""
    run.state.epoch += 1
    end = EpochEnd(epoch=run.state.epoch, out=out, elapsed=elapsed, record={
        "step": run.state.step, "epoch": run.state.epoch, **out.metrics(),
        "throughput/examples_per_sec": trained / max(elapsed, 1e-9),
        "time/epoch_s": elapsed,
    })
    run.state.last_train = out.metrics()
    run.state.wall_time_s = time.perf_counter() - run.clock_start
    for callback in callbacks:
        callback.on_epoch_end(end)


def warn_test_set_selection(run: Run) -> None:
    """Once per run (a resumed run keeps the warning it already has): selecting on test data."""
    if run.monitor is None or not run.monitor.name.startswith("test/"):
        return
    message = TEST_SET_WARNING.format(name=run.monitor.name)
    if message not in run.state.warnings:
        logger.warning("%s", message)
        run.state.warnings.append(message)


def checkpoint_on_interrupt(run: Run) -> None:
    """A stopped run writes its checkpoint (mid-epoch sums included) and says how to continue."""
    if not (run.spec.trainer.checkpoint and run.dist.is_main):
        return
    path = run.run_dir / CHECKPOINT
    save_checkpoint(path, checkpoint_state(run))
    logger.warning("interrupted: checkpoint written to %s", path)  # the closing lines say how to continue


def stop_poll(stop: GracefulStop, run: Run) -> Callable[[], bool]:
    """``should_stop`` for the loop. Under DDP the ranks agree through an all-reduce, which waits for
    the device: every step on gloo (CPU, cheap), every 20th step on NCCL so GPUs keep queueing work."""
    if not run.dist.enabled:
        return lambda: stop.requested
    every = 20 if run.dist.backend == "nccl" else 1
    calls = 0
    agreed = False

    def poll() -> bool:
        nonlocal calls, agreed
        calls += 1
        if not agreed and calls % every == 0:
            agreed = any_rank(stop.requested, run.dist, run.device)
        return agreed

    return poll


def _restore_partial(run: Run) -> EpochProgress | None:
    """The sums of an epoch stopped part-way; under DDP they are global, so rank 0 alone carries them."""
    p = run.state.partial
    if not p:
        return None
    fresh = EpochProgress.zeros(run.device)
    fresh.batches = int(p["batches"])
    if run.dist.is_main:
        fresh.loss_sum += p["loss_sum"].to(run.device)
        fresh.correct += p["correct"].to(run.device)
        fresh.count = int(p["count"])
    return fresh


def _partial_as_checkpoint_data(p: EpochProgress, ctx: DistContext) -> dict:
    """Sums over all ranks of an epoch stopped part-way, as tensors and numbers a checkpoint holds."""
    loss_sum, correct, count = sums_over_ranks(p.loss_sum, p.correct, p.count, ctx).cpu()
    return {"loss_sum": loss_sum.float(), "correct": correct.long(), "count": int(count), "batches": p.batches}
