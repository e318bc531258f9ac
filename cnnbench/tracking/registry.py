"""Experiment trackers by name: the ``logger`` group's options, each a tracker class and its settings' schema.

A tracker is one module of this package and one ``conf/logger/NAME.yaml``. The module declares the schema
of its settings (a :class:`~cnnbench.schema.Section` dataclass) and registers its class under the option's
name, as the model registry does for networks::

    @dataclass
    class NewConfig(Section):
        project: str = MISSING

    @register_tracker("new", NewConfig)
    class NewTracker: ...  # NewTracker(settings, cfg, run_dir, overrides, resuming): start, log, finish, warning

The option file writes its keys under its own name (``# @package logger.new``), so several options compose
(``logger=[tensorboard,mlflow,wandb]``: ``logger.mlflow.tracking_uri``, ``logger.wandb.project``). The
modules of this package are imported once, when a tracker or the schemas are first asked for
(:func:`discover`); none imports its tracker's library at module level.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import ConfigError
from ..schema import Section

ALWAYS = "tensorboard"  # the run folder's own record (metrics.jsonl, TensorBoard events): always written
GROUP = "logger"

T = TypeVar("T")


@dataclass
class TensorBoardConfig(Section):
    """``logger=tensorboard``: the run folder's own record, nothing to set (it is written whatever the logger)."""


@dataclass(frozen=True)
class TrackerEntry:
    """One ``logger`` option: its schema and its tracker class (None: TensorBoard, which the run folder writes)."""

    name: str
    schema: type[Section]
    opener: Callable[..., Any] | None


TRACKERS: dict[str, TrackerEntry] = {ALWAYS: TrackerEntry(ALWAYS, TensorBoardConfig, None)}
_discovered = False


def register_tracker(name: str, schema: type[Section]) -> Callable[[T], T]:
    """Register a tracker class under the ``logger`` option ``name``, its settings typed by ``schema``."""

    def add(opener: T) -> T:
        TRACKERS[name] = TrackerEntry(name, schema, opener)  # type: ignore[arg-type]
        return opener

    return add


def discover() -> dict[str, TrackerEntry]:
    """Every tracker of this package, its module imported once (a module registers when imported)."""
    global _discovered
    if not _discovered:
        package = __name__.rpartition(".")[0]
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{module.name}")
        _discovered = True
    return TRACKERS


def tracker_schemas() -> dict[str, type[Section]]:
    """``logger`` option name -> the dataclass of its settings."""
    return {name: entry.schema for name, entry in discover().items()}


def register_tracker_schemas() -> None:
    """Put each tracker's schema in Hydra's ConfigStore as ``schema/logger/NAME`` (its option file names it)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in tracker_schemas().items():
        store.store(group=f"schema/{GROUP}", name=name, node=schema)


def tracker_entry(name: str) -> TrackerEntry:
    """The registered tracker ``name``; one sentence naming the known ones otherwise."""
    entries = discover()
    if name not in entries:
        raise ConfigError(f"logger={name}: no such tracker; known: {', '.join(sorted(entries))}")
    return entries[name]


def logger_sections(node: Any) -> dict[str, Any]:
    """The config's ``logger`` section as {option name: its settings}, whichever cnnbench wrote it: today's
    (``logger: {mlflow: {...}, wandb: {...}}``), an older run folder's single option (``logger: {name: mlflow,
    tracking_uri: ...}``) or a list of such options; ``{}`` when there is none. Settings stay as given
    (config nodes or typed sections)."""
    if node is None:
        return {}
    if isinstance(node, (ListConfig, list, tuple)):
        merged: dict[str, Any] = {}
        for item in node:
            merged.update(logger_sections(item))
        return merged
    if isinstance(node, (DictConfig, dict)) and isinstance(node.get("name"), str):  # the old flat section
        settings = {k: v for k, v in (OmegaConf.to_container(node) if isinstance(node, DictConfig)
                                      else node).items() if k != "name"}
        return {str(node["name"]): OmegaConf.create(settings) if isinstance(node, DictConfig) else settings}
    if isinstance(node, (DictConfig, dict)):
        return {str(k): v for k, v in node.items()}
    return {}


def upgrade_logger(cfg: DictConfig) -> bool:
    """Rewrite an older run folder's flat ``logger`` section into today's shape in place (``logger.name=mlflow``
    -> ``logger.mlflow``); True when it changed."""
    node = cfg.get(GROUP)
    if not isinstance(node, (DictConfig, ListConfig)) or (isinstance(node, DictConfig) and "name" not in node):
        return False
    sections = logger_sections(node)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg[GROUP] = {name: (OmegaConf.to_container(s) if isinstance(s, DictConfig) else s)
                      for name, s in sections.items()}
    return True
