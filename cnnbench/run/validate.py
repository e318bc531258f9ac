"""Checks of a composed config before anything trains, each failure one clear sentence.

``cnnbench train`` runs them on every job of a sweep before Hydra creates the first job folder;
``train()`` runs them again so that code calling it directly gets the same messages.
"""

from __future__ import annotations

import difflib
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Number
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import override_key
from ..data.idx import train_size
from ..errors import ConfigError, one_line
from ..models import get_model_spec, input_side
from ..models.configured import INIT_SCHEMES, model_kwargs
from ..models.registry import check_min_size, check_model_kwargs


def _positive(value: Any, key: str, integer: bool) -> None:
    kind = "a positive integer" if integer else "a positive number"
    if isinstance(value, bool) or not isinstance(value, Number) or (integer and not float(value).is_integer()):
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{key} must be {kind}, got {value}")


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``low`` to ``high``, each end open or closed."""

    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True
    integer: bool = False

    def contains(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, Number) or (self.integer and not float(v).is_integer()):
            return False
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def words(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.high == math.inf:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


UNIT = Range(0.0, 1.0)  # [0, 1): momentum-like decays and probabilities where 1 means "never moves"
# Options checked when present (null skips a check); a group added later puts its options' ranges here.
RANGES: dict[str, Range] = {
    "optimizer.momentum": UNIT,
    "optimizer.dampening": UNIT,
    "optimizer.betas": UNIT,  # each of the two
    "optimizer.weight_decay": Range(0.0),
    "optimizer.eps": Range(0.0, low_open=True),
    "scheduler.warmup_epochs": Range(0.0),
    "scheduler.eta_min": Range(0.0),
    "scheduler.step_epochs": Range(0.0, low_open=True),
    "scheduler.gamma": Range(0.0, low_open=True),
    "trainer.divergence_loss": Range(0.0, low_open=True),  # nats
    "trainer.eval_every": Range(0, integer=True),  # 0: only after the last epoch
    "trainer.logs_per_epoch": Range(0, integer=True),
    "trainer.chance_patience": Range(0, integer=True),  # 0: never warn
    "trainer.label_smoothing": UNIT,
    "trainer.ema.decay": UNIT,
    "trainer.target_acc": Range(0.0, 1.0, low_open=True, high_open=False),
    "trainer.early_stopping.patience": Range(1, integer=True),
    "trainer.early_stopping.min_delta": Range(0.0),
    "augment.flip": Range(0.0, 1.0, high_open=False),  # probabilities
    "augment.erase": Range(0.0, 1.0, high_open=False),
    "augment.crop_padding": Range(0, integer=True),  # pixels
}


def check_finite(cfg: DictConfig) -> None:
    """Every float option finite: a NaN or infinite rate would only show up as a diverged run."""
    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{key} must be a finite number, got {node}")

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - '${hydra:job.num}' resolves only inside a job: check what is written
        plain = OmegaConf.to_container(cfg, resolve=False)
    walk({k: v for k, v in plain.items() if k != "hydra"}, "")


def check_ranges(cfg: DictConfig) -> None:
    """The options of ``RANGES`` that this config has, each within its range."""
    for key, allowed in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if key == "optimizer.betas":
            values = list(value) if not isinstance(value, (str, Number)) else [value]
            if len(values) != 2 or not all(allowed.contains(v) for v in values):
                raise ConfigError(f"{key} must be two numbers in [0, 1), got {values}")
        elif not allowed.contains(value):
            raise ConfigError(f"{key} must be {allowed.words()}, got {value!r}")
    opt = cfg.optimizer
    if opt.get("nesterov") and (not opt.get("momentum") or opt.get("dampening")):
        raise ConfigError(f"optimizer.nesterov=true needs optimizer.momentum > 0 and no dampening, "
                          f"got momentum {opt.get('momentum')}")


def check_values(cfg: DictConfig) -> None:
    """Types and ranges of the numbers a run depends on, then the model-specific ones."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"no value given for {', '.join(missing)} (set it on the command line, e.g. "
                          f"{missing[0]}=...)")
    check_finite(cfg)
    spec = get_model_spec(str(cfg.model.name))  # unknown names raise with the valid list
    _positive(cfg.trainer.epochs, "trainer.epochs", integer=True)
    _positive(cfg.trainer.batch_size, "trainer.batch_size", integer=True)
    if cfg.trainer.eval_batch_size is not None:
        _positive(cfg.trainer.eval_batch_size, "trainer.eval_batch_size", integer=True)
    _positive(cfg.optimizer.lr, "optimizer.lr", integer=False)
    for key in ("limit_train_batches", "limit_eval_batches", "grad_clip_norm"):
        if cfg.trainer.get(key) is not None:
            _positive(cfg.trainer[key], f"trainer.{key}", integer=key != "grad_clip_norm")
    if cfg.dataset.resize is not None:
        _positive(cfg.dataset.resize, "dataset.resize", integer=True)
    check_min_size(spec.name, input_side(spec.name, cfg.dataset.resize), spec.min_resolution)
    if cfg.trainer.init not in INIT_SCHEMES:
        raise ConfigError(f"trainer.init must be {' or '.join(INIT_SCHEMES)}, got {cfg.trainer.init!r}")
    _check_names(cfg)
    check_ranges(cfg)
    check_model_kwargs(spec.name, model_kwargs(cfg))
    _check_batch_fits(cfg)
    _check_selection(cfg)


def _check_selection(cfg: DictConfig) -> None:
    """The validation split, the monitor and early stopping."""
    from .selection import Monitor

    val_size = cfg.dataset.get("val_size", 0)
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
        raise ConfigError(f"dataset.val_size must be a whole number of examples >= 0, got {val_size!r}")
    if not isinstance(cfg.dataset.get("val_seed", 0), int):
        raise ConfigError(f"dataset.val_seed must be an integer, got {cfg.dataset.get('val_seed')!r}")
    n = train_size(cfg.dataset)
    if n is not None and val_size >= n:
        raise ConfigError(f"dataset.val_size={val_size} leaves no training examples ({n} examples of "
                          f"{cfg.dataset.name})")
    if n is not None and n - val_size < cfg.trainer.batch_size:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is larger than the training set left "
                          f"after holding out dataset.val_size={val_size} ({n - val_size} examples)")
    stopping = cfg.trainer.get("early_stopping") or {}
    if stopping.get("patience") is not None:
        _positive(stopping.get("patience"), "trainer.early_stopping.patience", integer=True)
    min_delta = stopping.get("min_delta", 0.0)
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not 0 <= min_delta < float("inf"):
        raise ConfigError(f"trainer.early_stopping.min_delta must be a number >= 0, got {min_delta!r}")
    Monitor.from_config(cfg)  # an unknown monitor, val/* without a split, early stopping without a monitor


def _check_names(cfg: DictConfig) -> None:
    """Optimizer and schedule names against the tables the builders use."""
    from .optim import OPTIMIZERS, SCHEDULES, check_name

    check_name("optimizer.name", str(cfg.optimizer.name), OPTIMIZERS)
    check_name("scheduler.name", str(cfg.scheduler.name), SCHEDULES)


def check_global_batch(batch_size: int, world_size: int) -> None:
    """Under torchrun ``trainer.batch_size`` is the global batch: it must split evenly over the ranks."""
    if world_size > 1 and batch_size % world_size:
        raise ConfigError(f"trainer.batch_size={batch_size} is the global batch and must divide "
                          f"evenly over the {world_size} processes")


def _check_batch_fits(cfg: DictConfig) -> None:
    n = train_size(cfg.dataset)
    if n is not None and cfg.trainer.batch_size > n:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is larger than the training set "
                          f"({n} examples of {cfg.dataset.name})")


def check_output_dir(path: str | Path) -> None:
    """The run folder must be creatable and writable; checked by really creating (and removing) a
    folder in its nearest existing parent, since permission bits say nothing about read-only mounts or
    virtual file systems (/proc, /sys), where even root cannot create folders."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create the output folder {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the output folder {path}: {existing} is not writable")
    try:
        probe = tempfile.mkdtemp(prefix=".cnnbench-write-check-", dir=existing)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {path}: {existing} does not accept new folders "
                          f"({exc.strerror or exc})") from None
    os.rmdir(probe)


def check_device(cfg: DictConfig) -> None:
    """The device exists here and every ``device.*`` value is one it can run (speed.settings' checks)."""
    from ..devices import resolve_device
    from ..speed.settings import check_device_options

    try:
        index = cfg.device.get("index")
    except Exception:  # e.g. '${hydra:job.num}', known only inside a sweep job
        index = None
    check_device_options(cfg.device, resolve_device(str(cfg.device.type), index))


def validate_config(cfg: DictConfig) -> None:
    """Every check that needs only the composed config (no Hydra run folder)."""
    check_values(cfg)
    check_device(cfg)
    check_memory(cfg)


def check_memory(cfg: DictConfig) -> None:
    """A training step that clearly cannot fit in the device's memory (without creating a CUDA context)."""
    import torch

    from ..devices import resolve_device
    from .memory import check_step_fits

    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        index = cfg.device.get("index")
    except Exception:  # noqa: BLE001 - '${hydra:job.num}': known only inside a sweep job
        index = None
    device = resolve_device(str(cfg.device.type), index)
    if device.type == "cuda" and world > 1:  # under torchrun each rank checks its own GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    check_step_fits(cfg, device, world)


# ------------------------------------------------------------------------- command-line pre-flight


def flat_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys += flat_keys(value, f"{full}.")
    return keys


def check_added_keys(overrides: Iterable[str], base: DictConfig, group_names: set[str]) -> None:
    """Keys added with ``+`` that the config does not define: Hydra accepts them, we refuse them."""
    known = set(flat_keys(base))
    for item in overrides:
        if not item.startswith("+"):
            continue
        key = override_key(item)
        if key.startswith("hydra") or key in known or key in group_names or key.startswith("model."):
            continue  # model.* arguments: checked against what the model family declares
        raise ConfigError(f"unknown config key {key!r} (added with '+'): cnnbench does not read it"
                          f"{_did_you_mean(key, known)}")


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def explain_override_error(message: str, known: Iterable[str]) -> str:
    """Hydra's 'Could not override' message plus a hint naming the closest real key."""
    first = message.strip().splitlines()[0]
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        hint = _did_you_mean(key, known) or "; see the keys with: cnnbench train --cfg job"
        return f"{first[:-1] if first.endswith('.') else first}: no such key{hint}"
    return one_line(message)


def expand_sweep(args: Sequence[str]) -> list[list[str]]:
    """The override list of every job a basic sweep would launch (one list for a single run)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ..config import config_dir

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(args))
    return BasicSweeper.split_arguments(parsed, None)[0]
