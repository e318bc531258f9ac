"""Weights & Biases during training (``logger=wandb``), offline by default: no account, no network.

The run's records (the same metrics.jsonl records MLflow gets: :class:`cnnbench.tracking.trackers.Trackers`)
go to a W&B run whose files are written under the run folder (``RUN_DIR/wandb/offline-run-*``); upload them
later with ``wandb sync RUN_DIR/wandb/offline-run-*`` (``logger.mode=online`` sends them live, with a W&B login).
Each record is logged at its ``step`` (optimizer steps, TensorBoard's x axis); the summary's final figures
become the W&B run's summary. W&B's set-up (it starts its own service process, seconds) happens when the
tracker opens, before the run's build; any failure of W&B is one warning and the run goes on.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from ..errors import ConfigError
from ..schema import Section
from .registry import register_tracker

logger = logging.getLogger(__name__)

SKIPPED = ("kind", "step", "time")  # record keys that are not metrics (step is W&B's own axis)


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items()
            if k not in SKIPPED and isinstance(v, (int, float)) and not isinstance(v, bool)}


WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class WandbLoggerConfig(Section):
    """``logger=wandb``: Weights & Biases beside TensorBoard, offline by default (``conf/logger/wandb.yaml``)."""

    project: str = MISSING
    mode: str = MISSING  # offline | online | disabled
    tags: list[str] = MISSING

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"{prefix}.mode must be {' or '.join(WANDB_MODES)}, got {self.mode!r}")
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("logger=wandb needs Weights & Biases, which is not installed: "
                              "pip install 'cnnbench[wandb]'")
        if not self.project.strip():
            raise ConfigError(f"{prefix}.project must be a name, got {self.project!r}")


@register_tracker("wandb", WandbLoggerConfig)
class WandbTracker:
    """One run's W&B logging (see the module's docstring)."""

    def __init__(self, section: WandbLoggerConfig, cfg: DictConfig, run_dir: Path, overrides: list[str],
                 resuming: bool) -> None:
        self.warning: str | None = None
        self.mode = str(section.mode)
        self.run_dir = run_dir
        self._run = None
        try:
            os.environ.setdefault("WANDB_SILENT", "true")  # its banner and sync hints: the log says what matters
            import wandb

            config = OmegaConf.to_container(cfg, resolve=True)
            self._run = wandb.init(
                project=str(section.project), mode=self.mode, dir=str(run_dir), name=run_dir.name,
                group=run_dir.parent.name if (run_dir.parent / "multirun.yaml").is_file() else None,
                config=config, tags=list(section.tags or []), notes=" ".join(overrides) or None,
                settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
                reinit="create_new")
            logger.info("W&B (%s): run %s in %s%s", self.mode, self._run.id, Path(self._run.dir).parent,
                        f"; upload it with: wandb sync {Path(self._run.dir).parent}" if self.mode == "offline" else "")
        except Exception as exc:  # a missing package, a failed login: the tracker's problem, never the run's
            self._warn(exc)

    def start(self) -> None:
        pass  # W&B sends from its own service process

    def log(self, kind: str, record: dict[str, Any]) -> None:
        """One metrics.jsonl record at its step (plain numbers: nothing waits for the device)."""
        if self._run is None or self.warning is not None:
            return
        try:
            self._run.log(_numbers(record), step=int(record["step"]))
        except Exception as exc:
            self._warn(exc)

    def finish(self, summary: dict[str, Any]) -> None:
        """The summary's final figures and the run's status; closes the W&B run (waits for its files)."""
        if self._run is None:
            return
        try:
            self._run.summary.update({k: v for k, v in _numbers(summary).items() if "/" in k or k.endswith("_s")})
            self._run.summary["status"] = str(summary.get("status"))
            self._run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if self.warning is not None:
            return
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        self.warning = (f"W&B logging stopped ({type(exc).__name__}: {reason}); the run goes on and its folder is "
                        "complete")
        logger.warning("%s", self.warning)
