"""The run's experiment trackers as one list: TensorBoard and the run folder always, plus the ``logger`` option's.

Every tracker has the same four members, fed by the same record functions
(:class:`cnnbench.runfolder.log.RunLogger` hands each metrics.jsonl record to :meth:`Trackers.log`):
``start()`` once the run is built, ``log(kind, record)`` per record (plain numbers, already read by the loop:
no host sync), ``finish(summary)`` after summary.json is written, and ``warning`` (None, or the one sentence of a
tracker that failed and stopped; the run goes on). :data:`OPENERS` maps a ``logger`` option's name to the
function that opens its tracker; adding a tracker is its module, its ``conf/logger/NAME.yaml`` (with a schema in
:mod:`cnnbench.schema`) and one entry here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

logger = logging.getLogger(__name__)

ALWAYS = "tensorboard"  # the run folder's own record (metrics.jsonl, TensorBoard events): not a tracker here


def _open_mlflow(section: DictConfig, cfg: DictConfig, run_dir: Path, overrides: list[str], resuming: bool):
    from .live import MlflowTracker

    return MlflowTracker(section, cfg, run_dir, overrides, resuming)


def _open_wandb(section: DictConfig, cfg: DictConfig, run_dir: Path, overrides: list[str], resuming: bool):
    from .wandb_tracker import WandbTracker

    return WandbTracker(section, cfg, run_dir, overrides, resuming)


# logger option name -> (its section, the whole config, run folder, overrides, resuming) -> a tracker
OPENERS: dict[str, Callable[..., Any]] = {"mlflow": _open_mlflow, "wandb": _open_wandb}


def tracker_sections(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(name, its settings) of each tracker the config asks for beyond TensorBoard: the ``logger`` option's
    (``logger=mlflow``), or each entry of a list of them. A config recorded without a logger has none."""
    node = cfg.get("logger")
    nodes = list(node) if isinstance(node, (ListConfig, list)) else [node]
    return [(str(n.get("name")), n) for n in nodes
            if isinstance(n, DictConfig) and n.get("name") not in (None, ALWAYS)]


class Trackers:
    """Several trackers as one: each call goes to every tracker; one tracker's failure is its own."""

    def __init__(self, trackers: Sequence[Any] = ()) -> None:
        self.trackers = list(trackers)

    def __iter__(self):
        return iter(self.trackers)

    @property
    def warnings(self) -> list[str]:
        """The sentence of each tracker that failed during the run (summary.json lists them)."""
        return [t.warning for t in self.trackers if getattr(t, "warning", None)]

    def start(self) -> None:
        for tracker in self.trackers:
            tracker.start()

    def log(self, kind: str, record: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log(kind, record)

    def finish(self, summary: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.finish(summary)


def open_trackers(cfg: DictConfig, run_dir: Path, overrides: list[str], resuming: bool) -> Trackers:
    """The run's trackers beyond the run folder, opened (before the build: a run that fails to start is
    tracked too). A run that resumes from a checkpoint continues its folder's tracker runs where a tracker can."""
    return Trackers([OPENERS[name](section, cfg, run_dir, overrides, resuming)
                     for name, section in tracker_sections(cfg) if name in OPENERS])
