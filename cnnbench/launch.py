"""The command line's way into Hydra: checks before launch, sweep folders, resumed sweeps, exit codes.

``hydra_main(args)`` wraps ``train()`` in ``@hydra.main``. Before Hydra creates any folder it composes
and validates every job of the command line (``preflight``); after a sweep it reads every job's
``summary.json``, whichever launcher ran it, and exits non-zero when any job did not complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from .distributed import broadcast_object, init_from_env, launched_by_torchrun, shutdown
from .errors import ConfigError
from .validate import validate_config

logger = logging.getLogger(__name__)

EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3, "interrupted": 130}
HYDRA_INFO_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--package", "-p"}
RESUME_SWEEP_KEY = "resume_sweep"


def is_multirun(args: Sequence[str]) -> bool:
    return bool({"-m", "--multirun"} & set(args))


def _plain(args: Sequence[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


def _given(args: Sequence[str], key: str) -> str | None:
    """The value of ``key=value`` on the command line, if present."""
    for a in _plain(args):
        if a.split("=", 1)[0].lstrip("+~") == key:
            return a.split("=", 1)[1] if "=" in a else ""
    return None


# ---------------------------------------------------------------------------------------- pre-flight


def _jobs(args: Sequence[str]) -> list[list[str]]:
    """Every job's overrides; sweeps a basic sweeper cannot expand (Optuna's intervals) keep fixed ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from .validate import expand_sweep

    plain = _plain(args)
    if not is_multirun(args):
        return [plain]
    try:
        return expand_sweep(plain)
    except HydraException:
        try:
            parsed = OverridesParser.create().parse_overrides(plain)
        except HydraException as exc:
            raise ConfigError(f"cannot parse the sweep: {str(exc).strip().splitlines()[0]}") from None
        return [[p.input_line for p in parsed if not p.is_sweep_override()]]


def preflight(args: Sequence[str]) -> str | None:
    """Compose and check every job before Hydra creates any folder; returns the run or sweep folder.

    Raises :class:`ConfigError` with one sentence for the first bad job.
    """
    from hydra.errors import HydraException

    from .config import compose_config, config_dir
    from .validate import check_added_keys, check_output_dir, explain_override_error, flat_keys

    multirun = is_multirun(args)
    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    out_dir = None
    for job in _jobs(args):
        added = [o for o in job if o.startswith("+")]
        try:
            cfg = compose_config(job, return_hydra_config=True)
        except HydraException as exc:
            raise ConfigError(explain_override_error(str(exc), flat_keys(compose_config([])))) from None
        if added:
            check_added_keys(added, compose_config([o for o in job if not o.startswith("+")]), groups)
        out_dir = str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
        check_output_dir(out_dir)
        _check_distributed(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # its job-time values (hydra.job.num) do not exist yet
        validate_config(cfg)
    return out_dir


def _check_distributed(cfg: DictConfig) -> None:
    """Settings that only matter under torchrun, checked before any process starts training."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and int(cfg.trainer.batch_size) % world:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is the global batch and must divide "
                          f"evenly over the {world} processes")
    if world > 1:
        from .train import check_sync_batchnorm

        check_sync_batchnorm(cfg)


def sweep_naming_overrides(args: Sequence[str]) -> list[str]:
    """Name sweep job folders by the swept values only (``3_model=nin,optimizer.lr=0.1``).

    Hydra's ``override_dirname`` lists every override, paths included; overrides that are the same
    for every job go to its ``exclude_keys`` so they stay out of folder and TensorBoard run names.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain = _plain(args)
    if any(a.startswith("hydra.job.config.override_dirname.exclude_keys") for a in plain):
        return []
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except Exception:  # Hydra reports bad overrides itself, with its own message
        return []
    fixed = sorted({o.key_or_group for o in parsed if not o.is_sweep_override()} | {RESUME_SWEEP_KEY})
    keys = [k for k in fixed if not k.startswith("hydra")] + ["hydra.sweep.dir", "hydra.run.dir"]
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"]


# ------------------------------------------------------------------------------------ resumed sweeps


def _comparable(overrides: Sequence[str]) -> list[str]:
    return sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != RESUME_SWEEP_KEY)


def find_sweep_to_resume(args: Sequence[str], base: Path = Path("outputs/multirun")) -> Path:
    """The newest sweep folder under ``base`` that ran the same overrides as ``args``."""
    wanted = _comparable([a for a in _plain(args) if not a.startswith("hydra.")])
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
    earlier summary kept as ``summary.previous.json`` and its train.log appended to.
    """
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        return None
    try:
        previous = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        previous = {"status": "unreadable"}
    if previous.get("status") == "completed":
        logger.info("%s=true: %s already completed, skipping it", RESUME_SWEEP_KEY, run_dir)
        return previous
    if previous.get("status") == "interrupted" and (run_dir / "last.pt").exists():
        with open_dict(cfg):
            cfg.trainer.resume = "auto"
        return None
    shutil.copyfile(summary_path, run_dir / "summary.previous.json")
    for stale in [run_dir / "metrics.jsonl", run_dir / "last.pt", *run_dir.glob("events.out.tfevents.*")]:
        stale.unlink(missing_ok=True)
    return None


# ------------------------------------------------------------------------------------------- outcome


def sweep_outcomes(sweep_dir: Path) -> list[dict]:
    """status, error and folder of every job of a sweep, read from their summary.json files."""
    outcomes = []
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()):
        try:
            s = json.loads((job / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            s = {"status": "failed", "error": "no readable summary.json (the job died before finishing)"}
        outcomes.append({"status": s.get("status"), "error": s.get("error"), "run_dir": str(job)})
    return outcomes


def exit_code(outcomes: list[dict], multirun: bool) -> int:
    """0 when every job completed; else the single run's code, or 1 for a sweep, listing the failures."""
    failed = [o for o in outcomes if o["status"] != "completed"]
    if multirun:
        logger.info("sweep: %d of %d jobs completed", len(outcomes) - len(failed), len(outcomes))
        for o in failed:
            logger.error("job did not complete: %s: %s: %s", o["run_dir"], o["status"], o["error"])
    if not failed:
        return 0
    return 1 if multirun else EXIT_CODES.get(failed[0]["status"], 1)


# --------------------------------------------------------------------------------------- entry point


def hydra_main(args: Sequence[str]) -> int:
    """Run ``cnnbench train`` with Hydra overrides ``args``; returns the process exit code."""
    from hydra.core.hydra_config import HydraConfig

    from .train import train

    args = list(args)
    if HYDRA_INFO_FLAGS & set(args):
        return _run_hydra(args, lambda cfg: None)
    multirun = is_multirun(args)
    out_dir = preflight(args)
    extra = sweep_naming_overrides(args) if multirun else []
    if launched_by_torchrun():
        if multirun:
            raise ConfigError("-m sweeps cannot run under torchrun; launch each job with torchrun instead "
                              "(or use the submitit launcher)")
        extra += _torchrun_overrides(args, out_dir)
    if multirun and _given(args, "hydra.sweep.dir") is None:
        resume = str(_given(args, RESUME_SWEEP_KEY)).lower() == "true"
        out_dir = str(find_sweep_to_resume(args)) if resume else out_dir
        extra.append(f"hydra.sweep.dir={out_dir}")  # the one folder this sweep's jobs go to
    elif multirun:
        out_dir = _given(args, "hydra.sweep.dir")
    outcomes: list[dict] = []

    def job(cfg: DictConfig) -> float:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        previous = prepare_resumed_job(cfg, run_dir) if cfg.get(RESUME_SWEEP_KEY) else None
        summary = previous or train(cfg, run_dir)
        outcomes.append({k: summary.get(k) for k in ("status", "error", "run_dir")})
        # Sweepers (Optuna) maximize this value; a job that did not complete gives NaN.
        return float(summary["test/acc"]) if summary.get("test/acc") is not None else float("nan")

    try:
        _run_hydra([*args, *extra], job)
    finally:
        shutdown()
    if multirun:
        return exit_code(sweep_outcomes(Path(out_dir)), multirun=True)
    return exit_code(outcomes, multirun=False)


def _torchrun_overrides(args: Sequence[str], out_dir: str | None) -> list[str]:
    """All ranks share rank 0's run folder; only rank 0 records Hydra's config and log file there."""
    ctx = init_from_env(str(_given(args, "device.type") or _given(args, "device") or "auto"))
    extra = []
    if _given(args, "hydra.run.dir") is None:
        extra.append(f"hydra.run.dir={broadcast_object(out_dir, ctx)}")
    if not ctx.is_main:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return extra


def _run_hydra(argv: list[str], task) -> int:
    import hydra

    from .config import PRIMARY_CONFIG, config_dir

    saved = sys.argv
    sys.argv = ["cnnbench train", *argv]
    try:
        hydra.main(config_path=str(config_dir()), config_name=PRIMARY_CONFIG, version_base="1.3")(task)()
    finally:
        sys.argv = saved
    return 0
