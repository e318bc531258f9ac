"""Optimizers and learning-rate schedules, each built from one name -> builder table.

``OPTIMIZERS`` and ``SCHEDULES`` are the single lists of valid ``optimizer.name`` and
``scheduler.name`` values: the pre-launch validation reads them too, so a typo is refused before any
job starts. Schedules are per-step factors of the base rate (``LambdaLR``), so a resumed run only needs
the step count to continue them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..errors import ConfigError
from ..schema import AdamConfig, CosineConfig, OneCycleConfig, Section, SGDConfig, StepConfig
from ..speed.dynamo import lazy_step_class


def _sgd(cfg: SGDConfig, params: Iterable, extra: dict) -> torch.optim.Optimizer:
    return lazy_step_class(torch.optim.SGD)(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           dampening=cfg.dampening, nesterov=cfg.nesterov, **extra)


def _adam(cls: type[torch.optim.Optimizer]) -> Callable[[AdamConfig, Iterable, dict], torch.optim.Optimizer]:
    def build(cfg: AdamConfig, params: Iterable, extra: dict) -> torch.optim.Optimizer:
        return lazy_step_class(cls)(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **extra)
    return build


# optimizer.name -> builder(its typed section, params, extra keyword arguments)
OPTIMIZERS: dict[str, Callable[[Any, Iterable, dict], torch.optim.Optimizer]] = {
    "sgd": _sgd,  # the book's, with momentum 0
    "adam": _adam(torch.optim.Adam),
    "adamw": _adam(torch.optim.AdamW),
}


def build_optimizer(cfg: Section, params: Iterable, fused: bool = False) -> torch.optim.Optimizer:
    """torch.optim optimizer for the ``optimizer`` section (its schema's object, :class:`SGDConfig` or
    :class:`AdamConfig`: every value there, none defaulted here).

    ``fused`` asks for the single-kernel implementation; otherwise torch picks its default (the
    multi-tensor ``foreach`` path on CUDA, a per-parameter loop on the CPU). The optimizer is torch's class
    with a step that does not import the compiler into a run that compiles nothing
    (:mod:`cnnbench.speed.dynamo`).
    """
    check_name("optimizer.name", cfg.name, OPTIMIZERS)
    return OPTIMIZERS[cfg.name](cfg, params, {"fused": True} if fused else {})


# ------------------------------------------------------------------------------------------ schedules


def cosine_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps to 1, then cosine decay to ``floor`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def step_factor(step: int, period: int, gamma: float) -> float:
    """``gamma`` to the number of whole periods done."""
    return gamma ** (step // period)


def onecycle_factor(step: int, total: int, pct_start: float, div_factor: float, final_div_factor: float,
                    anneal: str = "cos") -> float:
    """One-cycle as a factor of the peak rate: from 1/div_factor up to 1 over the first ``pct_start`` of
    ``total`` steps, then down to 1/(div_factor*final_div_factor) at the last step, along half cosines
    (``anneal="cos"``) or straight lines (``"linear"``): torch's OneCycleLR with that anneal_strategy,
    its momentum left constant."""
    start, low = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
    peak_step = float(pct_start * total) - 1
    if step <= peak_step:
        begin, end, pct = start, 1.0, step / peak_step
    else:
        begin, end, pct = 1.0, low, min(1.0, (step - peak_step) / (total - 1 - peak_step))
    if anneal == "linear":
        return begin + (end - begin) * pct
    return end + (begin - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _onecycle(cfg: OneCycleConfig, base_lr: float, steps_per_epoch: int, total: int) -> Callable[[int], float]:
    anneal = str(cfg.anneal)  # cos | linear (checked by OneCycleConfig.check)
    return lambda step: onecycle_factor(step, total, cfg.pct_start, cfg.div_factor, cfg.final_div_factor, anneal)


def _cosine(cfg: CosineConfig, base_lr: float, steps_per_epoch: int, total: int) -> Callable[[int], float]:
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    floor = cfg.eta_min / base_lr if base_lr else 0.0
    return lambda step: cosine_factor(step, warmup, total, floor)


def _step(cfg: StepConfig, base_lr: float, steps_per_epoch: int, total: int) -> Callable[[int], float]:
    period = max(1, int(cfg.step_epochs * steps_per_epoch))
    return lambda step: step_factor(step, period, cfg.gamma)


# scheduler.name -> factor maker(its typed section, base lr, steps per epoch, total steps), or None for a
# constant rate
SCHEDULES: dict[str, Callable[[Any, float, int, int], Callable[[int], float]] | None] = {
    "none": None,  # the book's constant rate
    "cosine": _cosine,
    "step": _step,
    "onecycle": _onecycle,
}


def build_scheduler(cfg: Section, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """A LambdaLR stepped once per optimizer step, or None for ``none`` (the book's constant rate); ``cfg``:
    the ``scheduler`` section, its schema's object."""
    check_name("scheduler.name", cfg.name, SCHEDULES)
    make = SCHEDULES[cfg.name]
    if make is None:
        return None
    total = max(1, steps_per_epoch * epochs)
    factor = make(cfg, optimizer.param_groups[0]["lr"], steps_per_epoch, total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_name(key: str, name: str, table: dict) -> None:
    """Refuse a name that is not in ``table``, listing the valid ones."""
    if name not in table:
        raise ConfigError(f"unknown {key} {name!r}; use {', '.join(table)}")
