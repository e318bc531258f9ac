"""Everything a run needs before its first step, built from the composed config.

``build_run(spec, run_dir)`` makes, in order: the device, the seeds, the model (with the book's weight
initialization), the data loaders on the device, the speed settings (autotuned where ``auto``), the DDP
wrapper under torchrun, the optimizer and the schedule. The result is a :class:`Run`, the live objects
the loop in :mod:`cnnbench.run.train` works with.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..data import DeviceLoader
from ..data.augment import Augment
from ..data.loader import normalization
from ..devices import resolve_device
from ..errors import ConfigError
from ..models.configured import init_weights
from ..models.stats import count_parameters, forward_flops
from ..schema import DeviceConfig, EmaConfig, TrainerConfig
from ..speed import load
from ..speed.allocator import tune_malloc
from ..speed.compiling import compile_for_training
from ..speed.load import FOLLOW, CpuSample, ThreadFollower, thread_setting
from ..speed.precision import Precision
from ..speed.settings import SpeedSettings, prepare_speed
from .distributed import SINGLE_PROCESS, DistContext, broadcast_object
from .memory import check_step_fits
from .optim import build_optimizer, build_scheduler
from .selection import Monitor
from .spec import RunSpec
from .state import RunState
from .validate import check_global_batch


@dataclass
class Run:
    """The live objects of one run."""

    cfg: DictConfig  # the composed config as the run records it (checkpoints), read whole: settings come from spec
    run_dir: Path
    device: torch.device
    model: nn.Module  # what is trained (maybe wrapped in DDP, maybe compiled)
    raw_model: nn.Module  # the nn.Module whose state_dict is saved
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a LambdaLR, or None for a constant rate
    precision: Precision
    train_loader: DeviceLoader
    val_loader: DeviceLoader | None  # None without a validation split (dataset.val_size=0, the book's way)
    test_loader: DeviceLoader
    monitor: Monitor | None  # the metric that selects best.pt and drives early stopping
    ema: torch.optim.swa_utils.AveragedModel | None  # EMA of the weights (trainer.ema.decay), evaluated
    params: int
    flops: int  # forward FLOPs per image
    speed: SpeedSettings
    dist: DistContext = field(default_factory=DistContext)
    state: RunState = field(default_factory=RunState)
    clock_start: float = 0.0  # time.perf_counter() at the run's first start (earlier segments included)
    spec: RunSpec | None = None  # the checked spec it was built from (typed sections, settled data): build_run sets it
    threads: int = field(default_factory=torch.get_num_threads)  # torch's CPU threads as it starts training
    follower: ThreadFollower | None = None  # device.num_threads=auto on the CPU: the count follows the load

    @property
    def batches_per_epoch(self) -> int:
        return self.train_loader.batches_per_epoch(self.spec.trainer.limit_train_batches)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    # Process-wide, so set both ways for in-process runs; but only when it changes: the call imports
    # torch._inductor's config (and with it torch._dynamo and sympy), 1.2 s of a LeNet run's start-up.
    if (torch.are_deterministic_algorithms_enabled() != deterministic
            or torch.is_deterministic_algorithms_warn_only_enabled()):
        torch.use_deterministic_algorithms(deterministic)


def build_run(spec: RunSpec, run_dir: Path, ctx: DistContext = SINGLE_PROCESS) -> Run:
    """Build device, data, model, optimizer and scheduler for the checked run ``spec`` (:func:`validate_config`'s
    result; this rank's share under DDP). Only what needs the live device is checked again."""
    since = load.start_window()  # the command's start-up is the first window of the load the count follows
    trainer, device_cfg = spec.trainer, spec.device
    check_global_batch(trainer.batch_size, ctx.world_size)
    tune_malloc(device_cfg.malloc_tuning)  # once per process, before the data is read
    device = torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else resolve_device(
        device_cfg.type, device_cfg.index)
    if device.type == "cuda":  # with the GPU's free memory now (validation used its total, creating no context)
        check_step_fits(spec, device, ctx.world_size, live=True)
    threads = thread_setting(device_cfg.num_threads)
    if isinstance(threads, int):
        torch.set_num_threads(threads)
    seed_everything(trainer.seed, trainer.deterministic)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = device_cfg.cudnn_benchmark and not trainer.deterministic
    network = spec.network
    size = network.side
    raw_model = network.build()
    init_weights(raw_model, trainer.init)
    params, flops = count_parameters(raw_model), forward_flops(raw_model, spec.data.channels, size)
    train_loader, val_loader, test_loader = build_loaders(device, size, ctx, spec)
    raw_model.to(device)
    speed = prepare_speed(device_cfg, device, raw_model, (train_loader, val_loader, test_loader),
                          trainer.deterministic, flops, agree=lambda s: broadcast_object(s, ctx),
                          key=tuning_key(spec, size, ctx), tunes=ctx.rank == 0)
    model = wrap_ddp(raw_model, spec, ctx, device)
    raw_model = model.module if ctx.enabled else raw_model  # SyncBatchNorm conversion makes a new module
    follower = follow_load(threads, device, trainer.deterministic, since)  # after the timed choices
    if speed.compile:  # around DDP's wrapper, so compiled graphs see its gradient hooks
        model = compile_for_training(model, local_batch(trainer.batch_size, ctx),
                                     dynamic_threads=follower is not None)
    ema = build_ema(raw_model, spec.trainer.ema)
    optimizer = build_optimizer(spec.sections["optimizer"], raw_model.parameters(), fused=speed.fused_optimizer)
    batches = train_loader.batches_per_epoch(spec.trainer.limit_train_batches)
    scheduler = build_scheduler(spec.sections["scheduler"], optimizer, batches, spec.trainer.epochs)
    precision = Precision.create(speed.precision, device)
    monitor = Monitor.from_config(spec.trainer, spec.data.val_size)
    return Run(spec.record, run_dir, device, model, raw_model, optimizer, scheduler, precision,
               train_loader, val_loader, test_loader, monitor, ema, params, flops, speed, ctx,
               spec=spec, threads=torch.get_num_threads(), follower=follower)


def follow_load(setting: int | str | None, device: torch.device, deterministic: bool,
                since: CpuSample | None) -> ThreadFollower | None:
    """device.num_threads=auto on the CPU: a :class:`ThreadFollower` started from the load since ``since``
    (its first count set), up to torch's count now. None when the count is fixed: a number, null, a
    deterministic run (the same numbers whatever the load), another device, one usable core."""
    if setting != FOLLOW or device.type != "cpu" or deterministic or torch.get_num_threads() < 2:
        return None
    follower = ThreadFollower(most=torch.get_num_threads(), interval_s=load.INTERVAL_S)
    follower.start(since)
    return follower


def tuning_key(spec: RunSpec, size: int, ctx: DistContext) -> dict:
    """What start-up timing decisions are kept for (with the machine and torch's version, which
    cnnbench.speed.decisions adds): the model and its arguments, the input, the batch one process trains on."""
    network = spec.network
    return {"model": {"name": network.name, **network.kwargs}, "input": [spec.data.channels, size, size],
            "classes": spec.data.num_classes, "batch": local_batch(spec.trainer.batch_size, ctx)}


def local_batch(batch_size: int, ctx: DistContext) -> int:
    """Examples of a full global batch that this rank trains on (the loader's tensor_split share)."""
    return batch_size // ctx.world_size + (1 if ctx.rank < batch_size % ctx.world_size else 0)


def build_loaders(device: torch.device, size: int, ctx: DistContext,
                  spec: RunSpec) -> tuple[DeviceLoader, DeviceLoader | None, DeviceLoader]:
    """Train, validation (None without a split) and test loaders: each split once on the device,
    this rank's share of every batch (the splits the spec's settling read, else read now)."""
    splits = spec.load_splits()
    train_split, val_split, test_split = splits.train, splits.val, splits.test
    common = dict(device=device, resize=size, normalize=normalization(spec.sections["dataset"]), rank=ctx.rank,
                  world_size=ctx.world_size)
    trainer = spec.trainer
    train_loader = DeviceLoader(train_split, trainer.batch_size, shuffle=True, seed=trainer.seed,
                                augment=Augment.from_config(spec.sections.get("augment")), **common)
    eval_bs = trainer.eval_batch_size or trainer.batch_size
    val_loader = None if val_split is None else DeviceLoader(val_split, eval_bs, shuffle=False, **common)
    return train_loader, val_loader, DeviceLoader(test_split, eval_bs, shuffle=False, **common)


def build_ema(model: nn.Module, cfg: EmaConfig) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics (torch's
    AveragedModel), or None when ``trainer.ema.decay`` is null."""
    decay = cfg.decay
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    # use_buffers: the running BatchNorm statistics are averaged too, so the EMA model needs no
    # extra pass over the data before it is evaluated.
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(float(decay)), use_buffers=True)


def check_sync_batchnorm(trainer: TrainerConfig, device: DeviceConfig) -> None:
    """PyTorch's SyncBatchNorm runs only on CUDA devices; say so before anything starts."""
    if trainer.sync_batchnorm and (str(device.type) == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                          "implementation); on CPUs each process keeps its own BatchNorm statistics")


def wrap_ddp(model: nn.Module, spec: RunSpec, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (optionally with SyncBatchNorm) when under torchrun."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    check_sync_batchnorm(spec.trainer, spec.device)
    if spec.trainer.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
