"""``cnnbench train``: one run from a composed config to a complete run folder.

``train(cfg, run_dir)`` is the plain function (tests call it after ``compose``); the command line's
``@hydra.main`` wrapper is ``cnnbench.launch.hydra_main``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import __version__
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import DeviceLoader, load_splits
from .describe import count_parameters, forward_flops
from .engine import (
    EpochProgress,
    LoopHooks,
    sums_over_ranks,
    Precision,
    SpeedSettings,
    TrainingDiverged,
    build_optimizer,
    build_scheduler,
    evaluate,
    init_weights,
    log_points,
    resolve_device,
    resolve_speed,
    train_one_epoch,
)
from .errors import CheckpointError, CnnbenchError, ConfigError
from .models import build_model, get_model_spec
from .runlog import RunLogger, hparams_of, write_json_atomic
from .distributed import DistContext, any_rank, broadcast_object, init_from_env
from .signals import GracefulStop
from .validate import validate_config

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """Progress of a run that a checkpoint must carry to resume exactly."""

    epoch: int = 0  # epochs fully done
    step: int = 0  # optimizer steps done
    best_test_acc: float | None = None
    last_test_acc: float | None = None
    last_train: dict = field(default_factory=dict)  # last epoch's train/loss, train/acc
    train_time_s: float = 0.0  # seconds inside train_one_epoch, summed over epochs
    train_examples: int = 0
    chance_epochs: int = 0  # consecutive epochs at chance level
    warnings: list[str] = field(default_factory=list)
    partial: dict | None = None  # sums of an epoch stopped part-way (signal), to continue from

    def to_plain(self) -> dict:
        return dict(self.__dict__)


def image_size(cfg: DictConfig) -> int:
    """``dataset.resize``, or the model's book resolution when it is null."""
    return int(cfg.dataset.resize or get_model_spec(cfg.model.name).book_resolution)


def model_kwargs(cfg: DictConfig) -> dict:
    """The ``model`` group minus its name: the factory's keyword arguments."""
    return {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "name"}


def make_model(cfg: DictConfig) -> nn.Module:
    return build_model(
        cfg.model.name,
        in_channels=cfg.dataset.in_channels,
        num_classes=cfg.dataset.num_classes,
        image_size=image_size(cfg),
        **model_kwargs(cfg),
    )


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)  # process-wide: set both ways for in-process runs


def default_run_dir(cfg: DictConfig) -> Path:
    """The Hydra job's output folder, or a fresh timestamped folder when called outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    return Path("outputs") / f"{stamp}_{cfg.model.name}"


def job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


@dataclass
class Run:
    """The live objects of one run."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    model: nn.Module  # what is trained (maybe compiled)
    raw_model: nn.Module  # the nn.Module whose state_dict is saved
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    train_loader: DeviceLoader
    test_loader: DeviceLoader
    params: int
    flops: int
    speed: SpeedSettings
    dist: DistContext = field(default_factory=DistContext)
    state: RunState = field(default_factory=RunState)


def setup(cfg: DictConfig, run_dir: Path, ctx: DistContext = DistContext()) -> Run:
    """Build device, data, model, optimizer and scheduler for ``cfg`` (this rank's share under DDP)."""
    validate_config(cfg)
    if ctx.enabled and int(cfg.trainer.batch_size) % ctx.world_size:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is the global batch and must divide "
                          f"evenly over the {ctx.world_size} processes")
    if ctx.backend == "nccl":
        device = torch.device("cuda", ctx.local_rank)
    else:
        device = resolve_device(cfg.device.type, cfg.device.get("index"))
    if cfg.device.num_threads:
        torch.set_num_threads(int(cfg.device.num_threads))
    seed_everything(int(cfg.trainer.seed), bool(cfg.trainer.deterministic))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.device.cudnn_benchmark) and not cfg.trainer.deterministic
    size = image_size(cfg)
    raw_model = make_model(cfg)
    init_weights(raw_model, cfg.trainer.init)
    params = count_parameters(raw_model)
    flops = forward_flops(raw_model, cfg.dataset.in_channels, size)
    train_split, test_split = load_splits(cfg.dataset)
    normalize = (float(cfg.dataset.mean), float(cfg.dataset.std)) if cfg.dataset.normalize else None
    common = dict(device=device, resize=size, normalize=normalize, rank=ctx.rank, world_size=ctx.world_size)
    train_loader = DeviceLoader(train_split, int(cfg.trainer.batch_size), shuffle=True,
                                seed=int(cfg.trainer.seed), **common)
    eval_bs = int(cfg.trainer.eval_batch_size or cfg.trainer.batch_size)
    test_loader = DeviceLoader(test_split, eval_bs, shuffle=False, **common)
    raw_model.to(device)
    speed = resolve_speed(cfg.device, device, raw_model, train_loader, bool(cfg.trainer.deterministic))
    speed = broadcast_object(speed, ctx)  # every rank uses rank 0's choice
    if speed.channels_last:
        raw_model.to(memory_format=torch.channels_last)
        train_loader.channels_last = test_loader.channels_last = True
    model = wrap_ddp(raw_model, cfg, ctx, device)
    raw_model = model.module if ctx.enabled else raw_model  # SyncBatchNorm conversion makes a new module
    model = torch.compile(model) if speed.compile else model
    optimizer = build_optimizer(cfg.optimizer, raw_model.parameters(), fused=speed.fused_optimizer)
    steps = len(train_loader) if cfg.trainer.limit_train_batches is None else min(
        len(train_loader), int(cfg.trainer.limit_train_batches))
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps, int(cfg.trainer.epochs))
    precision = Precision.create(speed.precision, device)
    return Run(cfg, run_dir, device, model, raw_model, optimizer, scheduler, precision,
               train_loader, test_loader, params, flops, speed, ctx)


def check_sync_batchnorm(cfg: DictConfig) -> None:
    """PyTorch's SyncBatchNorm runs only on CUDA devices; say so before anything starts."""
    if cfg.trainer.get("sync_batchnorm") and (str(cfg.device.type) == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                          "implementation); on CPUs each process keeps its own BatchNorm statistics")


def wrap_ddp(model: nn.Module, cfg: DictConfig, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (optionally with SyncBatchNorm) when under torchrun."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    check_sync_batchnorm(cfg)
    if cfg.trainer.get("sync_batchnorm"):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------------------- checkpoints


def checkpoint_state(run: Run) -> dict:
    return {
        "model": run.raw_model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.precision.scaler.state_dict() if run.precision.scaler is not None else None,
        "epoch": run.state.epoch,
        "step": run.state.step,
        "run_state": run.state.to_plain(),
        "rng": rng_state(),
        "config": OmegaConf.to_container(run.cfg, resolve=True),
        "cnnbench_version": __version__,
    }


def resolve_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: None, this run folder's last.pt (auto), or a given path."""
    resume = cfg.trainer.resume
    if not resume:
        return None
    if str(resume) == "auto":
        path = run_dir / CHECKPOINT_NAME
        if not path.exists():
            logger.info("trainer.resume=auto: no %s in %s, starting from scratch", CHECKPOINT_NAME, run_dir)
            return None
        return path
    return Path(str(resume)).expanduser()


def restore(run: Run, path: Path) -> None:
    """Load model, optimizer, scheduler, scaler, progress and RNG states from ``path``."""
    state = load_checkpoint(path)
    saved_model = state["config"].get("model", {}).get("name")
    if saved_model != run.cfg.model.name:
        raise CheckpointError(
            f"checkpoint {path} was written for model {saved_model!r}, not {run.cfg.model.name!r}"
        )
    try:
        run.raw_model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model or optimizer: "
                              f"{str(exc).splitlines()[0]}") from exc
    if run.scheduler is not None and state.get("scheduler"):
        run.scheduler.load_state_dict(state["scheduler"])
    if run.precision.scaler is not None and state.get("scaler"):
        run.precision.scaler.load_state_dict(state["scaler"])
    run.state = RunState(**state["run_state"])
    set_rng_state(state["rng"])
    logger.info("resumed from %s at epoch %d, step %d", path, run.state.epoch, run.state.step)


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics.jsonl records past ``step``: a killed run may have logged beyond its checkpoint."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    import json

    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    path.write_text("".join(k + "\n" for k in kept))


# ------------------------------------------------------------------------------------------ the loop


def _progress_enabled(setting: Any) -> bool:
    if str(setting) == "auto":
        return sys.stderr.isatty()
    return bool(setting)


def _chance_check(run: Run, train_metrics: dict) -> None:
    """Warn when the loss stays at (or above) a uniform guess's, ln(classes), with chance accuracy."""
    classes = int(run.cfg.dataset.num_classes)
    at_chance = train_metrics["train/loss"] > math.log(classes) - 0.1 and train_metrics["train/acc"] < 2 / classes
    run.state.chance_epochs = run.state.chance_epochs + 1 if at_chance else 0
    patience = int(run.cfg.trainer.chance_patience)
    if patience and run.state.chance_epochs == patience:
        msg = (f"train loss has stayed at chance level (~ln {classes} = {math.log(classes):.3f}, accuracy "
               f"~{1 / classes:.2f}) for {patience} epochs: the network is not learning; try another "
               "learning rate (optimizer.lr=...)")
        logger.warning(msg)
        run.state.warnings.append(msg)


def run_epochs(run: Run, rlog: RunLogger, stop: GracefulStop) -> str:
    """Train epoch after epoch; returns "completed" or "interrupted"."""
    from tqdm.auto import tqdm

    cfg = run.cfg
    epochs = int(cfg.trainer.epochs)
    limit = cfg.trainer.limit_train_batches
    n_batches = len(run.train_loader) if limit is None else min(int(limit), len(run.train_loader))
    show_bar = _progress_enabled(cfg.trainer.progress_bar)
    while run.state.epoch < epochs:
        epoch = run.state.epoch
        partial = _restore_partial(run)
        bar = tqdm(total=n_batches, initial=partial.batches if partial else 0, desc=f"epoch {epoch + 1}/{epochs}",
                   leave=False, disable=not show_bar)
        hooks = LoopHooks(
            on_log=lambda m: rlog.log("train", m),
            should_stop=stop_poll(stop, run),
            bar=bar,
            log_points=log_points(n_batches, int(cfg.trainer.logs_per_epoch)),
            divergence_loss=cfg.trainer.divergence_loss,
        )
        t0 = time.perf_counter()
        out = train_one_epoch(
            run.model, run.train_loader, run.optimizer, run.scheduler, run.precision,
            epoch=epoch, global_step=run.state.step, hooks=hooks, progress=partial,
            limit_batches=limit, grad_clip_norm=cfg.trainer.grad_clip_norm, dist_ctx=run.dist,
        )
        bar.close()
        elapsed = time.perf_counter() - t0
        run.state.step = out["step"]
        run.state.train_time_s += elapsed
        run.state.train_examples += out["examples"] - (partial.count if partial else 0)
        if not out["complete"]:
            run.state.partial = _plain_progress(out["progress"], run.dist)
            return "interrupted"
        run.state.partial = None
        finish_epoch(run, rlog, out, elapsed)
        if any_rank(stop.requested, run.dist, run.device):  # all ranks leave after the same epoch
            return "interrupted"
    return "completed"


def stop_poll(stop: GracefulStop, run: Run):
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


def _plain_progress(p: EpochProgress, ctx: DistContext) -> dict:
    """Sums over all ranks of an epoch stopped part-way, as checkpoint data."""
    loss_sum, correct, count = sums_over_ranks(p.loss_sum, p.correct, p.count, ctx).cpu()
    return {"loss_sum": loss_sum.float(), "correct": correct.long(), "count": int(count), "batches": p.batches}


def finish_epoch(run: Run, rlog: RunLogger, out: dict, elapsed: float) -> None:
    """Evaluate (when due), log the epoch record, check for chance level, checkpoint."""
    cfg = run.cfg
    run.state.epoch += 1
    epoch = run.state.epoch
    record: dict[str, Any] = {
        "step": run.state.step, "epoch": epoch,
        "train/loss": out["train/loss"], "train/acc": out["train/acc"],
        "throughput/examples_per_sec": out["examples"] / max(elapsed, 1e-9),
        "time/epoch_s": elapsed,
    }
    every = int(cfg.trainer.eval_every)
    if (every > 0 and epoch % every == 0) or epoch == int(cfg.trainer.epochs):
        test = evaluate(run.model, run.test_loader, run.precision, cfg.trainer.limit_eval_batches, run.dist)
        record.update({"test/acc": test["test/acc"], "test/loss": test["test/loss"]})
        run.state.last_test_acc = test["test/acc"]
        best = run.state.best_test_acc
        run.state.best_test_acc = test["test/acc"] if best is None else max(best, test["test/acc"])
    run.state.last_train = {"train/loss": out["train/loss"], "train/acc": out["train/acc"]}
    rlog.log("epoch", record)
    logger.info(
        "epoch %d/%d: loss %.3f, train acc %.3f%s, %.0f examples/sec", epoch, int(cfg.trainer.epochs),
        out["train/loss"], out["train/acc"],
        f", test acc {record['test/acc']:.3f}" if "test/acc" in record else "",
        record["throughput/examples_per_sec"],
    )
    _chance_check(run, out)
    if cfg.trainer.checkpoint and run.dist.is_main:
        save_checkpoint(run.run_dir / CHECKPOINT_NAME, checkpoint_state(run))


# -------------------------------------------------------------------------------------------- summary


def summarize(run: Run | None, cfg: DictConfig, run_dir: Path, status: str, wall: float,
              overrides: list[str], error: BaseException | None = None) -> dict:
    """The summary.json content for any outcome."""
    s = run.state if run is not None else RunState()
    summary: dict[str, Any] = {
        "status": status,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "traceback": None if error is None or isinstance(error, TrainingDiverged)
        else "".join(traceback.format_exception(error)),
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "resize": _safe(lambda: image_size(cfg)),
        "epochs": int(cfg.trainer.epochs),
        "epochs_completed": s.epoch,
        "steps": s.step,
        "train/loss": s.last_train.get("train/loss"),
        "train/acc": s.last_train.get("train/acc"),
        "test/acc": s.last_test_acc,
        "best/test_acc": s.best_test_acc,
        "wall_time_s": wall,
        "train_time_s": s.train_time_s,
        "examples_per_sec": s.train_examples / s.train_time_s if s.train_time_s else None,
        "params": run.params if run else None,
        "flops_per_image": run.flops if run else None,
        "device": _device_name(run.device) if run else str(cfg.device.type),
        "precision": run.speed.precision if run else cfg.device.precision,
        "speed": dataclasses.asdict(run.speed) if run else None,
        "seed": int(cfg.trainer.seed),
        "deterministic": bool(cfg.trainer.deterministic),
        "warnings": s.warnings,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "world_size": run.dist.world_size if run else 1,
        "backend": run.dist.backend if run else None,
        "torch_version": torch.__version__,
        "cnnbench_version": __version__,
        "python_version": platform.python_version(),
    }
    if isinstance(error, TrainingDiverged):
        summary.update({"diverged_at_step": error.step, "diverged_loss": error.loss,
                        "last_finite_loss": error.last_finite_loss})
    return summary


def _safe(fn):
    try:
        return fn()
    except Exception:  # the summary of a failed run must never fail itself
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def train(cfg: DictConfig, run_dir: Path | str | None = None) -> dict:
    """Train the configured network; write the run folder; return the summary.

    Runtime failures (divergence, exceptions, signals) never escape: they are recorded in the returned
    summary and in ``summary.json`` with their status, so a sweep can go on with the next job.
    """
    threads = torch.get_num_threads()
    try:
        return _train(cfg, run_dir)
    finally:
        # device.num_threads is process-wide: give the caller (a test, a notebook) its setting back
        torch.set_num_threads(threads)


def _train(cfg: DictConfig, run_dir: Path | str | None) -> dict:
    ctx = init_from_env(str(cfg.device.type))  # a single process unless started by torchrun
    main = ctx.is_main  # only rank 0 writes the run folder
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = job_overrides()
    start = time.perf_counter()
    if main:
        write_json_atomic(run_dir / "summary.json", {"status": "running", "model": cfg.model.name})
    run: Run | None = None
    rlog: RunLogger | None = None
    status, error = "failed", None
    with GracefulStop() as stop:
        try:
            run = setup(cfg, run_dir, ctx)
            resume_from = resolve_resume(cfg, run_dir)
            if resume_from is not None:
                restore(run, resume_from)
                if main:
                    trim_metrics(run_dir, run.state.step)
            rlog = RunLogger(run_dir, enabled=main, purge_step=run.state.step + 1 if resume_from else None)
            if resume_from is None:
                rlog.log_config(cfg)
            status = run_epochs(run, rlog, stop)
            if status == "interrupted" and cfg.trainer.checkpoint and main:
                save_checkpoint(run_dir / CHECKPOINT_NAME, checkpoint_state(run))
                logger.warning("interrupted: checkpoint written to %s; resume with trainer.resume=auto "
                               "and hydra.run.dir=%s", run_dir / CHECKPOINT_NAME, run_dir)
        except TrainingDiverged as exc:  # reported by the closing lines
            status, error = "diverged", exc
        except CnnbenchError as exc:  # a problem the user can fix: its one sentence, in the closing lines
            status, error = "failed", exc
        except Exception as exc:  # any failure of this job is recorded, not raised (sweeps go on)
            status, error = "failed", exc
            logger.error("run failed: %s: %s", type(exc).__name__, exc, exc_info=True)
    summary = summarize(run, cfg, run_dir, status, time.perf_counter() - start, overrides, error)
    if rlog is not None:
        if status == "completed":
            rlog.log_hparams(hparams_of(cfg, overrides), {
                "hparam/test_acc": summary["test/acc"], "hparam/best_test_acc": summary["best/test_acc"],
                "hparam/train_loss": summary["train/loss"], "hparam/train_acc": summary["train/acc"],
            })
        rlog.close()
    if main:
        write_json_atomic(run_dir / "summary.json", summary)
        _closing_lines(summary)
    return summary


def _closing_lines(summary: dict) -> None:
    """The book's two closing lines, then where everything went."""
    if summary["status"] == "completed":
        logger.info("loss %.3f, train acc %.3f, test acc %.3f",
                    summary["train/loss"], summary["train/acc"], summary["test/acc"])
        logger.info("%.1f examples/sec on %s", summary["examples_per_sec"] or 0.0, summary["device"])
    else:
        logger.error("run %s: %s", summary["status"], summary["error"] or "")
    logger.info("run folder: %s", summary["run_dir"])
