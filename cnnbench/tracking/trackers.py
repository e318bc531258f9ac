"""The run's experiment trackers as one list: TensorBoard and the run folder always, plus each ``logger`` option's.

Every tracker has the same four members, fed by the same record functions
(:class:`cnnbench.runfolder.log.RunLogger` hands each metrics.jsonl record to :meth:`Trackers.log`):
``start()`` once the run is built, ``log(kind, record)`` per record (plain numbers, already read by the loop:
no host sync), ``finish(summary)`` after summary.json is written, and ``warning`` (None, or the one sentence of a
tracker that failed and stopped; the run goes on). Trackers are found by name in
:mod:`cnnbench.tracking.registry`; adding one is its module and its ``conf/logger/NAME.yaml``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..schema import Section
from .registry import ALWAYS, GROUP, logger_sections, tracker_entry

logger = logging.getLogger(__name__)


def tracker_sections(cfg: DictConfig) -> list[tuple[str, Any]]:
    """(name, its settings) of each tracker the config asks for beyond TensorBoard, in the order given
    (``logger=[mlflow,wandb]``). A config recorded by an older cnnbench (one flat ``logger`` option) reads the
    same; one recorded without a logger has none."""
    return [(name, settings) for name, settings in logger_sections(cfg.get(GROUP)).items() if name != ALWAYS]


def typed_settings(name: str, settings: Any) -> Section:
    """A tracker's settings as its schema's object. Settings not typed yet (an older run folder's, which may
    lack keys added since) are laid over today's option (``conf/logger/NAME.yaml``): a missing key gets
    today's default, a recorded one stays."""
    if isinstance(settings, Section):
        return settings
    if isinstance(settings, DictConfig) and OmegaConf.get_type(settings) is tracker_entry(name).schema:
        return OmegaConf.to_object(settings)  # composed with its schema already: complete
    from ..config import compose_config

    today = compose_config([f"{GROUP}={name}"])[GROUP][name]
    given = settings if isinstance(settings, DictConfig) else OmegaConf.create(dict(settings or {}))
    known = {k: v for k, v in given.items() if k in today}  # keys that no longer exist are dropped
    return OmegaConf.to_object(OmegaConf.merge(today, known))


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


def open_trackers(cfg: DictConfig, run_dir: Path, overrides: list[str], resuming: bool,
                  sections: dict[str, Section] | None = None) -> Trackers:
    """The run's trackers beyond the run folder, opened (before the build: a run that fails to start is
    tracked too). ``sections``: the checked settings of each tracker (the run spec's), else read from ``cfg``.
    ``cfg`` is what the trackers record as the run's config. A run that resumes from a checkpoint continues
    its folder's tracker runs where a tracker can."""
    chosen = sections if sections is not None else dict(tracker_sections(cfg))
    opened = []
    for name, settings in chosen.items():
        opener = tracker_entry(name).opener
        if opener is not None:
            opened.append(opener(typed_settings(name, settings), cfg, run_dir, overrides, resuming))
    return Trackers(opened)
