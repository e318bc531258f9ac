"""Model selection: which metric a run monitors, when it improved (best.pt), when to stop early, and the
objective a run offers a sweep that searches (``trainer.objective``).

The book has no validation split, so its recipes select nothing: the summary reports the final epoch.
With ``dataset.val_size > 0`` the default monitor is ``val/acc``; monitoring a test metric is allowed
but warned about, since a choice made on the test set overstates the test accuracy it then reports.
The objective is stricter: a validation metric only, since a search chooses among runs by it.

Never imports torch: ``cnnbench report`` ranks runs by their objective too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..schema import TrainerConfig
from .state import RunState

logger = logging.getLogger(__name__)

MONITORS = ("val/acc", "val/loss", "test/acc", "test/loss")
TEST_SET_WARNING = ("trainer.monitor={name} selects the checkpoint on the test set, so the test accuracy "
                    "reported for it is optimistic; hold out a validation split instead (dataset.val_size=5000)")


def monitor_name(trainer: TrainerConfig, val_size: int) -> str | None:
    """The monitored metric: ``trainer.monitor``, with ``auto`` meaning val/acc when a validation split
    exists (``val_size`` examples held out) and nothing otherwise."""
    name = trainer.monitor
    has_val = val_size > 0
    if name is None or str(name) in ("none", "null"):
        return None
    if str(name) == "auto":
        return "val/acc" if has_val else None
    if name not in MONITORS:
        raise ConfigError(f"trainer.monitor must be auto, null or one of {', '.join(MONITORS)}, got {name!r}")
    if name.startswith("val/") and not has_val:
        raise ConfigError(f"trainer.monitor={name} needs a validation split: set dataset.val_size (e.g. 5000)")
    return str(name)


@dataclass(frozen=True)
class Monitor:
    """How a run judges its evaluations."""

    name: str  # e.g. "val/acc"
    min_delta: float = 0.0  # improvement below this does not reset early stopping's count
    patience: int | None = None  # evaluations without such an improvement before stopping

    @property
    def higher_is_better(self) -> bool:
        return self.name.endswith("/acc")

    @classmethod
    def from_config(cls, trainer: TrainerConfig, val_size: int) -> Monitor | None:
        """The run's monitor (``trainer.monitor``, ``trainer.early_stopping``), None when it selects nothing."""
        name = monitor_name(trainer, val_size)
        stopping = trainer.early_stopping
        patience = stopping.patience
        if name is None:
            if patience is not None:
                raise ConfigError("trainer.early_stopping needs a monitored metric: hold out a validation "
                                  "split (dataset.val_size=5000) or set trainer.monitor")
            return None
        return cls(name, float(stopping.min_delta), None if patience is None else int(patience))

    def gain(self, value: float, best: float | None) -> float:
        """How much better ``value`` is than ``best`` (positive: better), in the metric's own units."""
        if best is None:
            return float("inf")
        return value - best if self.higher_is_better else best - value

    def update(self, state: RunState, evaluation: dict[str, float], epoch: int) -> bool:
        """Record an evaluation; True when it is the best so far (write best.pt). Sets
        ``state.stop_reason`` when early stopping's patience has run out."""
        value = evaluation[self.name]
        gain = self.gain(value, state.best_value)
        improved = gain > 0
        if improved:
            state.best_epoch, state.best_value, state.best_eval = epoch, value, dict(evaluation)
        state.evals_since_best = 0 if gain > self.min_delta else state.evals_since_best + 1
        if self.patience is not None and state.evals_since_best >= self.patience:
            state.stop_reason = (
                f"early stopping: {self.name} did not improve by more than {self.min_delta:g} in "
                f"{self.patience} evaluation{'s' if self.patience != 1 else ''}; best {state.best_value:.4f} "
                f"at epoch {state.best_epoch}")
        return improved


# ------------------------------------------------------------------------------------------ objective

# What a run returns to a searching sweeper, and which way is better: a validation metric of the checkpoint
# it selected (best.pt), or of its last evaluation when it selected none (trainer.monitor=null).
OBJECTIVES: dict[str, str] = {"val/acc": "maximize", "val/loss": "minimize"}
DEFAULT_OBJECTIVE = "val/acc"  # what summaries written before trainer.objective existed were chosen by


def objective_name(trainer: TrainerConfig) -> str:
    """``trainer.objective``, checked: a validation metric, never a test one."""
    name = str(trainer.objective)
    if name.startswith("test/"):
        raise ConfigError(f"trainer.objective={name} would choose among runs on the test set, so the test accuracy "
                          "reported for the choice is optimistic: use val/acc or val/loss (with dataset.val_size)")
    if name not in OBJECTIVES:
        raise ConfigError(f"trainer.objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return name


def objective_direction(name: str) -> str:
    """``maximize`` or ``minimize``: which way the objective ``name`` is better."""
    return OBJECTIVES[name]


def summary_objective(summary: Mapping[str, Any]) -> str:
    """The objective a summary.json records (older ones: the default, val/acc)."""
    name = summary.get("objective")
    return str(name) if name in OBJECTIVES else DEFAULT_OBJECTIVE


def selected_metric(summary: Mapping[str, Any], name: str) -> float | None:
    """The metric ``name`` (``val/acc``, ``test/acc``) of the checkpoint a run selected (summary.json's
    ``best/val_acc``), or of its last evaluation when it selected none; None when absent or not finite."""
    key = "best/" + name.replace("/", "_") if summary.get("best/epoch") is not None else name
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def objective_value(summary: Mapping[str, Any], name: str | None = None) -> float | None:
    """A run's objective ``name`` (default: the one its summary records): its selected checkpoint's value.
    The run's status is the caller's to judge."""
    return selected_metric(summary, summary_objective(summary) if name is None else name)


def best_index(values: list[float | None], direction: str) -> int | None:
    """The position of the best value (the first of equals, as Optuna's ``best_trial``), skipping None;
    None when there is no value."""
    scored = [(v if direction == "minimize" else -v, i) for i, v in enumerate(values) if v is not None]
    return min(scored)[1] if scored else None
