"""Sweeps (``cnnbench train -m``): job folder names, resuming an earlier sweep, a searching sweeper's
direction, what a job returns to it, and the sweep's outcome.

Jobs are named by their swept values; ``resume_sweep=true`` finds the earlier sweep of the same
command, skips its completed jobs, continues interrupted ones from their checkpoint and reruns the
rest. A searching sweeper (Optuna, Nevergrad, Ax, ...) must search the way ``trainer.objective`` is
better: ``check_sweeper_direction`` refuses a contradiction before launch. After any launcher has run
the jobs, ``sweep_outcomes`` reads every job's summary.json and ``sweep_closing_lines`` names the best.
"""

from __future__ import annotations

import logging
import math
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import override_key
from ..errors import ConfigError, ResumeRefused, RunFolderInUse
from ..run.selection import (
    OBJECTIVES,
    best_index,
    objective_direction,
    objective_value,
    selected_metric,
    summary_objective,
)
from ..runfolder.lock import holder_of
from ..runfolder.names import CHECKPOINT, METRICS, SUMMARY, is_run_folder, natural_key, read_summary

logger = logging.getLogger(__name__)

RESUME_SWEEP_KEY = "resume_sweep"
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3, "interrupted": 130}  # a single run's, by status
# Sweep jobs refused before touching their folder: the status their outcome line shows.
REFUSED_STATUS = {RunFolderInUse: "in use", ResumeRefused: "refused"}
PREVIOUS_SUMMARY = "summary.previous.json"  # a rerun job's earlier summary, kept


def sweep_naming_overrides(overrides: Sequence[str]) -> list[str]:
    """Name sweep job folders by the swept values only (``3_model=nin,optimizer.lr=0.1``).

    Hydra's ``override_dirname`` lists every override, paths included; overrides that are the same
    for every job go to its ``exclude_keys`` so they stay out of folder and TensorBoard run names.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(a.startswith("hydra.job.config.override_dirname.exclude_keys") for a in overrides):
        return []
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # Hydra reports bad overrides itself, with its own message
        return []
    fixed = sorted({o.key_or_group for o in parsed if not o.is_sweep_override()} | {RESUME_SWEEP_KEY})
    keys = [k for k in fixed if not k.startswith("hydra")] + ["hydra.sweep.dir", "hydra.run.dir"]
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"]


def _comparable(overrides: Sequence[str]) -> list[str]:
    return sorted(o for o in overrides if override_key(o) != RESUME_SWEEP_KEY)


def find_sweep_to_resume(overrides: Sequence[str], base: Path = Path("outputs/multirun")) -> Path:
    """The newest sweep folder under ``base`` that ran the same overrides."""
    wanted = _comparable([a for a in overrides if not a.startswith("hydra.")])
    matches = []
    for record in base.glob("*/*/multirun.yaml"):
        try:
            task = OmegaConf.load(record).hydra.overrides.task
        except Exception:  # an unreadable record is simply not a match
            continue
        if _comparable([t for t in task if not t.startswith("hydra.")]) == wanted:
            matches.append(record.parent)
    if not matches:
        raise ConfigError(
            f"{RESUME_SWEEP_KEY}=true: no earlier sweep with these overrides under {base}; "
            "give its folder with hydra.sweep.dir=..."
        )
    return max(matches, key=lambda p: p.stat().st_mtime)


def prepare_resumed_job(cfg: DictConfig, run_dir: Path) -> dict | None:
    """In a resumed sweep: the earlier summary of a completed job (skip it), else None (run it).

    An interrupted job continues from its checkpoint; a failed one starts again from scratch, its
    earlier summary kept as ``summary.previous.json`` and its log file appended to.
    """
    summary_path = run_dir / SUMMARY
    previous, problem = read_summary(run_dir)
    if problem == "no summary":
        return None
    if previous.get("status") == "completed":
        logger.info("%s=true: %s already completed, skipping it", RESUME_SWEEP_KEY, run_dir)
        return previous
    if previous.get("status") == "interrupted" and (run_dir / CHECKPOINT).exists():
        with open_dict(cfg):
            cfg.trainer.resume = "auto"
        return None
    shutil.copyfile(summary_path, run_dir / PREVIOUS_SUMMARY)
    for stale in [run_dir / METRICS, run_dir / CHECKPOINT, *run_dir.glob("events.out.tfevents.*")]:
        stale.unlink(missing_ok=True)
    return None


# ------------------------------------------------------------------------------- a searching sweeper

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"  # runs every job, chooses nothing
# Keys that state a direction anywhere in a sweeper's config (its search space, ``params``, aside):
# Optuna's ``direction`` (a word, or a list for several objectives), Nevergrad's ``optim.maximize`` and
# Ax's ``ax_config.experiment.minimize`` (booleans), and any other sweeper spelling it the same way.
DIRECTION_KEYS = ("direction", "maximize", "minimize")
SENSE_WORDS = {"maximize": "higher is better", "minimize": "lower is better"}


def is_searching(sweeper: DictConfig) -> bool:
    """Whether a sweeper may choose its trials by what the jobs return (any but Hydra's basic sweeper)."""
    target = str(sweeper.get("_target_") or "")
    return bool(target) and target != BASIC_SWEEPER


def stated_direction(sweeper: DictConfig) -> tuple[str, Any] | None:
    """The first setting that states the sweeper's direction, as (``hydra.sweeper.KEY``, its value), or None."""
    try:
        plain = OmegaConf.to_container(sweeper, resolve=True, enum_to_str=True)
    except Exception:  # noqa: BLE001 - an interpolation only a running sweep resolves: read what is written
        plain = OmegaConf.to_container(sweeper, resolve=False, enum_to_str=True)

    def walk(node: Any, path: str) -> tuple[str, Any] | None:
        if not isinstance(node, dict):
            return None
        for key, value in node.items():
            if key in DIRECTION_KEYS:
                return f"{path}.{key}", value
        for key, value in node.items():
            found = None if key == "params" else walk(value, f"{path}.{key}")
            if found:
                return found
        return None

    return walk(plain, "hydra.sweeper")


def direction_of(setting: str, value: Any) -> str | None:
    """``maximize`` or ``minimize`` as the setting states it; None when it does not say one of them."""
    key = setting.rsplit(".", 1)[-1]
    if key == "direction":
        words = value if isinstance(value, list) else [value]
        return str(words[0]).lower() if len(words) == 1 and str(words[0]).lower() in SENSE_WORDS else None
    if isinstance(value, bool):
        return "maximize" if value == (key == "maximize") else "minimize"
    return None


def check_sweeper_direction(sweeper: DictConfig, objective: str) -> str | None:
    """Before launch: a searching sweeper must search the way ``objective`` is better.

    Raises :class:`ConfigError` naming the setting to change when its stated direction is the other one
    (Hydra's Optuna, Nevergrad and Ax configs all minimize by default, which with ``val/acc`` finds the
    worst trial). Returns a warning line when a searching sweeper states no direction that can be read;
    None when all is well or the sweeper does not search.
    """
    if not is_searching(sweeper):
        return None
    wanted = objective_direction(objective)
    sense = f"{objective} ({SENSE_WORDS[wanted]})"
    stated = stated_direction(sweeper)
    if stated is not None and isinstance(stated[1], list) and len(stated[1]) > 1:  # Optuna's several objectives
        raise ConfigError(f"{stated[0]}={_shown(stated[1])} asks for {len(stated[1])} objectives, but each job "
                          f"returns one, {sense}: set {stated[0]}={wanted}")
    if stated is None or direction_of(*stated) is None:
        what = (f"states {stated[0]}={_shown(stated[1])}, neither minimize nor maximize" if stated
                else "states no direction cnnbench can read")
        return (f"the sweeper {sweeper.get('_target_')} {what}: make sure it "
                f"{'maximizes' if wanted == 'maximize' else 'minimizes'} {sense}, the value each job returns")
    setting, value = stated
    if direction_of(setting, value) != wanted:
        fix = _direction_value(setting, value, wanted)
        other = next(o for o, d in OBJECTIVES.items() if d != wanted)
        raise ConfigError(f"{setting}={_shown(value)} would search for the worst {sense}: set {setting}={fix}, "
                          f"or trainer.objective={other}")
    return None


def _direction_value(setting: str, value: Any, wanted: str) -> str:
    """The value of ``setting`` that states ``wanted``, spelled as an override."""
    key = setting.rsplit(".", 1)[-1]
    if key == "direction":
        return f"[{wanted}]" if isinstance(value, list) else wanted
    return str(wanted == key).lower()


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def job_return(summary: dict, objective: str, sweeper_target: str) -> float | None:
    """What a job returns to the sweeper: its objective when it completed with one, else what the sweeper
    counts as a failed trial, never a value that could win. That is NaN for most sweepers (Nevergrad's
    comparisons never pick it), but None for Hydra's Optuna sweeper: it marks a trial failed when the value
    is not a number, while a NaN makes Optuna 2's ``tell`` raise and end the whole sweep."""
    value = objective_value(summary, objective) if summary.get("status") == "completed" else None
    if value is not None:
        return value
    return None if "optuna" in sweeper_target.lower() else math.nan


# -------------------------------------------------------------------------------------- the outcome


def sweep_outcomes(sweep_dir: Path) -> list[dict]:
    """status, error, folder, objective and overrides of every job of a sweep, read from their summary.json
    files, in job order."""
    outcomes = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and is_run_folder(p)),
                  key=lambda p: natural_key(p.name))
    for job in jobs:
        holder = holder_of(job)
        if holder is not None:  # another process still writes it: its summary is not this sweep's
            s = {"status": "in use", "error": f"the job folder is in use by {holder}"}
        else:
            s, problem = read_summary(job)
            if problem:
                s = {"status": "failed", "error": f"no readable {SUMMARY} (the job died before finishing): {problem}"}
        outcomes.append({"status": s.get("status"), "error": s.get("error"), "run_dir": str(job),
                         "objective": summary_objective(s), "objective_value": objective_value(s),
                         "test_acc": selected_metric(s, "test/acc"), "overrides": s.get("overrides") or []})
    return outcomes


def merge_outcomes(on_disk: list[dict], here: list[dict]) -> list[dict]:
    """The sweep's outcomes from the job folders, with the refusals this process saw (a refused job
    wrote nothing, so its folder shows the other run's state)."""
    refused = {str(Path(o["run_dir"])): o for o in here if o.get("status") in REFUSED_STATUS.values()}
    merged = [refused.pop(str(Path(o["run_dir"])), o) for o in on_disk]
    return merged + list(refused.values())


def sweep_closing_lines(sweep_dir: Path, outcomes: list[dict], mlflow: Sequence[str] = ()) -> None:
    """How a sweep ends: how many jobs completed, where they are, the commands to compare them (``mlflow``:
    the lines that open its runs in MLflow's UI, with ``logger=mlflow``)."""
    failed = [o for o in outcomes if o["status"] != "completed"]
    for o in failed:
        logger.error("job did not complete: %s: %s: %s", o["run_dir"], o["status"], o["error"])
    folder = shlex.quote(str(sweep_dir))
    tracked = "".join(f"\n  {'in MLflow:' if i == 0 else '':<14}{line}" for i, line in enumerate(mlflow))
    logger.info("sweep: %d of %d jobs completed in %s\n  compare them: cnnbench report %s\n  curves:       "
                "tensorboard --logdir %s%s", len(outcomes) - len(failed), len(outcomes), sweep_dir, folder, folder,
                tracked)
    line = best_trial_line(outcomes)
    if line:
        logger.info("%s", line)


def best_trial(outcomes: list[dict]) -> dict | None:
    """The completed job with the best objective (the first of equals, in job order); None when no
    completed job has one (no validation split). Jobs are compared on the objective they recorded."""
    done = [o for o in outcomes if o.get("status") == "completed" and o.get("objective_value") is not None]
    if not done:
        return None
    objective = done[0]["objective"]
    same = [o for o in done if o["objective"] == objective]
    index = best_index([o["objective_value"] for o in same], objective_direction(objective))
    return None if index is None else same[index]


def best_trial_line(outcomes: list[dict]) -> str | None:
    """'best of 3 jobs by val/acc (higher is better): optimizer.lr=0.27', its objective and test accuracy,
    its folder; None when no job has an objective value."""
    best = best_trial(outcomes)
    if best is None:
        return None
    objective = best["objective"]
    lists = [set(o.get("overrides") or []) for o in outcomes if o.get("overrides")]
    common = set.intersection(*lists) if len(lists) > 1 else set()
    settings = [o for o in best.get("overrides") or [] if o not in common] or ["(the settings every job shares)"]
    test = "-" if best.get("test_acc") is None else f"{best['test_acc']:.4f}"
    return (f"best of {len(outcomes)} jobs by {objective} ({SENSE_WORDS[objective_direction(objective)]}): "
            f"{' '.join(settings)}\n  {objective} {best['objective_value']:.4f}; test acc {test} (reported, never "
            f"used to choose)\n  run folder: {best['run_dir']}")


def exit_code(outcomes: list[dict], multirun: bool) -> int:
    """0 when every job completed; else the single run's code, or 1 for a sweep."""
    failed = [o for o in outcomes if o["status"] != "completed"]
    if not failed:
        return 0
    return 1 if multirun else EXIT_CODES.get(failed[0]["status"], 1)
