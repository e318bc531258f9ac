"""Sweeps (``cnnbench train -m``): job folder names, resuming an earlier sweep, and its outcome.

Jobs are named by their swept values; ``resume_sweep=true`` finds the earlier sweep of the same
command, skips its completed jobs, continues interrupted ones from their checkpoint and reruns the
rest; after any launcher has run the jobs, ``sweep_outcomes`` reads every job's summary.json.
"""

from __future__ import annotations

import logging
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import override_key
from ..errors import ConfigError, ResumeRefused, RunFolderInUse
from ..runfolder.lock import holder_of
from ..runfolder.names import CHECKPOINT, METRICS, SUMMARY, is_run_folder, read_summary

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


def sweep_outcomes(sweep_dir: Path) -> list[dict]:
    """status, error and folder of every job of a sweep, read from their summary.json files."""
    outcomes = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and is_run_folder(p)):
        holder = holder_of(job)
        if holder is not None:  # another process still writes it: its summary is not this sweep's
            s = {"status": "in use", "error": f"the job folder is in use by {holder}"}
        else:
            s, problem = read_summary(job)
            if problem:
                s = {"status": "failed", "error": f"no readable {SUMMARY} (the job died before finishing): {problem}"}
        outcomes.append({"status": s.get("status"), "error": s.get("error"), "run_dir": str(job)})
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


def exit_code(outcomes: list[dict], multirun: bool) -> int:
    """0 when every job completed; else the single run's code, or 1 for a sweep."""
    failed = [o for o in outcomes if o["status"] != "completed"]
    if not failed:
        return 0
    return 1 if multirun else EXIT_CODES.get(failed[0]["status"], 1)
