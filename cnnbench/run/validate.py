"""Checks of a composed config before anything trains, each failure one clear sentence.

``cnnbench train`` runs them once on every job of a sweep before Hydra creates the first job folder, and
hands each job the checked :class:`~cnnbench.run.spec.RunSpec`; ``train()`` called directly (tests, notebooks)
runs them itself, so that it gets the same messages.
"""

from __future__ import annotations

import difflib
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import override_key
from ..data.sources import SettledData, settle_dataset
from ..errors import ConfigError, one_line
from ..models import get_model_spec, input_side
from ..models.configured import model_from_config, model_kwargs
from ..models.registry import check_min_size, check_model_kwargs, min_input, models_taking
from ..schema import check_sections, type_error_sentence
from .spec import RunSpec, run_spec


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


def check_values(cfg: DictConfig, settled: SettledData | None = None) -> SettledData:
    """Values the schema's types cannot judge: each section's ranges and choices (:mod:`cnnbench.schema`,
    beside the fields), finiteness, then what needs the model, the optimizer tables or the data. The data
    is settled here unless ``settled`` says what it holds already; returns the settled data."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"no value given for {', '.join(missing)} (set it on the command line, e.g. "
                          f"{missing[0]}=...)")
    check_finite(cfg)
    spec = get_model_spec(str(cfg.model.name))  # unknown names raise with the valid list
    check_sections(cfg)
    if settled is None:
        settled = settle_dataset(cfg)  # what only the data knows (image folders, CIFAR): bad data refused here
    n = settled.spec.train_size
    knobs = model_kwargs(cfg)
    check_model_kwargs(spec.name, knobs)  # first: the smallest input side is computed from the knobs
    check_min_size(spec.name, input_side(spec.name, cfg.dataset.resize), min_input(spec.name, knobs), knobs)
    _check_names(cfg)
    # A network from outside the book is built and run here; the book's networks are built once, on the meta
    # device, by the memory estimate below (validate_config), which refuses impossible knob combinations
    check_network_runs(cfg)
    _check_batch_fits(cfg, n)
    _check_selection(cfg, n)
    return settled


def check_network_runs(cfg: DictConfig) -> bool:
    """A network from outside the book (custom, torchvision, timm, an installed package's) is built and run
    on two images of the data's shape here, so an import error, a factory that raises or an output that is
    not (batch, classes) is one sentence before any run folder exists; returns whether it was one. The book's
    networks are built on the meta device instead (their knobs; VGG at 224 pixels would cost seconds)."""
    from ..models.configured import image_size, network_label
    from ..models.external import check_output
    from ..models.registry import load_entry_points

    name = str(cfg.model.name)
    if not (get_model_spec(name).source or name in load_entry_points()):
        return False
    import torch

    with torch.random.fork_rng(devices=[]):  # building draws initial weights: not from the run's generator
        model = model_from_config(cfg)
        check_output(model, int(cfg.dataset.in_channels), int(cfg.dataset.num_classes), image_size(cfg),
                     network_label(cfg))
    return True


def _check_selection(cfg: DictConfig, n: int | None) -> None:
    """The validation split, the monitor, early stopping and the objective; ``n``: the examples train and
    validation share."""
    from .selection import Monitor, objective_name
    from .spec import trainer_section

    val_size = int(cfg.dataset.val_size)  # an integer >= 0 (schema)
    if n is not None and val_size >= n:
        raise ConfigError(f"dataset.val_size={val_size} leaves no training examples ({n} examples of "
                          f"{cfg.dataset.name})")
    if n is not None and n - val_size < cfg.trainer.batch_size:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is larger than the training set left "
                          f"after holding out dataset.val_size={val_size} ({n - val_size} examples)")
    trainer = trainer_section(cfg)
    Monitor.from_config(trainer, val_size)  # an unknown monitor, val/* without a split, stopping without a monitor
    objective_name(trainer)  # a test metric or an unknown name (a split is needed only by a searching sweep)


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


def _check_batch_fits(cfg: DictConfig, n: int | None) -> None:
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


def validate_config(cfg: DictConfig, settled: SettledData | None = None) -> RunSpec:
    """Every check that needs only the composed config (no Hydra run folder), once; returns the checked
    spec that ``train`` and ``build_run`` take. ``settled``: the data as an equal config settled it already."""
    settled = check_values(cfg, settled)
    check_device(cfg)
    spec = run_spec(cfg, settled)
    check_memory(spec)
    return spec


def check_memory(spec: RunSpec) -> None:
    """A training step that clearly cannot fit in the device's memory (without creating a CUDA context)."""
    import torch

    from ..devices import resolve_device
    from .memory import check_step_fits

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(spec.device.type, spec.device.index)
    if device.type == "cuda" and world > 1:  # under torchrun each rank checks its own GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    check_step_fits(spec, device, world)


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


def explain_override_error(exc: BaseException, known: Iterable[str]) -> str:
    """One line for Hydra's refusal of a composition: a value of the wrong type (the schema's), or 'Could
    not override' plus a hint naming the closest real key."""
    typed = type_error_sentence(exc)
    if typed is not None:
        return typed
    message = str(exc)
    first = message.strip().splitlines()[0]
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        known = list(known)
        takers = models_taking(key.removeprefix("model.")) if key.startswith("model.") else []
        if takers and key not in known:  # a knob of another family (model.conv_arch on LeNet)
            hint = f"; it is a knob of {', '.join(takers)}, not of the chosen model (pick one with model=NAME)"
        elif key in known:  # a key of the default option of its group, not of the one chosen (Adam's momentum)
            hint = f"; the chosen {key.split('.')[0]} option does not have it (cnnbench train --cfg job shows its keys)"
        else:
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
