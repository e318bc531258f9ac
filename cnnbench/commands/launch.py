"""The command line's way into Hydra: checks before launch, the job function, exit codes.

``hydra_main(args)`` wraps ``train()`` in ``@hydra.main``. Before Hydra creates any folder it composes
and validates every job of the command line (``preflight``); for a single run it then checks the resume
and takes the run folder's lock (``_claim_run_folder``), and it turns Hydra's own ``.hydra/`` writing off
so that each job writes that record itself, under its folder's lock. After a sweep it reads every job's
``summary.json`` (:mod:`cnnbench.commands.sweeps`), whichever launcher ran it, and exits non-zero when any job
did not complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import override_key, split_override
from ..data.sources import check_data_present, settle_dataset
from ..errors import ConfigError, ResumeRefused, RunFolderInUse
from ..run.distributed import broadcast_object, current, init_from_env, launched_by_torchrun, shutdown
from ..run.resume import check_resume
from ..run.validate import validate_config
from ..runfolder.lock import run_folder_lock
from .sweeps import (
    REFUSED_STATUS,
    RESUME_SWEEP_KEY,
    exit_code,
    find_sweep_to_resume,
    merge_outcomes,
    overrides_only,
    prepare_resumed_job,
    sweep_naming_overrides,
    sweep_outcomes,
)

logger = logging.getLogger(__name__)

HYDRA_INFO_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve", "--package", "-p"}


def is_multirun(args: Sequence[str]) -> bool:
    return bool({"-m", "--multirun"} & set(args))


def override_value(text: str) -> str:
    """``text`` as a Hydra override value: as it is when plain, else quoted (spaces, commas, brackets)."""
    if re.fullmatch(r"[\w./:@+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _given(args: Sequence[str], key: str) -> str | None:
    """The value of ``key=value`` on the command line, if present."""
    for a in overrides_only(args):
        given, value = split_override(a)
        if given == key:
            return value or ""
    return None


# ---------------------------------------------------------------------------------------- pre-flight


def _jobs(args: Sequence[str]) -> list[list[str]]:
    """Every job's overrides; sweeps a basic sweeper cannot expand (Optuna's intervals) keep fixed ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from ..run.validate import expand_sweep

    overrides = overrides_only(args)
    if not is_multirun(args):
        return [overrides]
    try:
        return expand_sweep(overrides)
    except HydraException:
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except HydraException as exc:
            raise ConfigError(f"cannot parse the sweep: {str(exc).strip().splitlines()[0]}") from None
        return [[p.input_line for p in parsed if not p.is_sweep_override()]]


def preflight(args: Sequence[str]) -> str | None:
    """Compose and check every job before Hydra creates any folder; returns the run or sweep folder.

    Raises :class:`ConfigError` with one sentence for the first bad job.
    """
    from hydra.errors import HydraException

    from ..config import compose_config, config_dir
    from ..run.validate import check_added_keys, check_output_dir, explain_override_error, flat_keys

    multirun = is_multirun(args)
    groups = {p.name for p in config_dir().iterdir() if p.is_dir()}
    out_dir = None
    datasets: dict[str, DictConfig] = {}  # each distinct dataset of the jobs, checked once after every value
    for job in _jobs(args):
        added = [o for o in job if o.startswith("+")]
        try:
            cfg = compose_config(job, return_hydra_config=True)
            fixed = _sweeper_fixed_params(cfg, job) if multirun else []
            if fixed:  # values a searching sweeper adds to every trial (lr_search's dataset.val_size)
                job = [*fixed, *job]
                cfg = compose_config(job, return_hydra_config=True)
        except HydraException as exc:
            raise ConfigError(explain_override_error(exc, flat_keys(compose_config([])))) from None
        if multirun:
            _check_optimizing_sweep(cfg)
        if added:
            check_added_keys(added, compose_config([o for o in job if not o.startswith("+")]), groups)
        out_dir = str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
        check_output_dir(out_dir)
        _check_distributed(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # its job-time values (hydra.job.num) do not exist yet
        validate_config(cfg)
        datasets.setdefault(OmegaConf.to_yaml(cfg.dataset), cfg)
    for cfg in datasets.values():  # after every job's values: it may download
        check_data_present(cfg)
    return out_dir


def _sweeper_fixed_params(cfg: DictConfig, job: Sequence[str]) -> list[str]:
    """The fixed ``key=value`` entries of a searching sweeper's ``params`` (Optuna's), as overrides,
    except keys the command line sets itself (they win, as in the sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = cfg.hydra.sweeper.get("params") or {}
    given = {override_key(o) for o in job}
    entries = [f"{k}={v}" for k, v in params.items() if k not in given]
    parsed = OverridesParser.create().parse_overrides(entries)
    return [p.input_line for p in parsed if not p.is_sweep_override()]


def _check_optimizing_sweep(cfg: DictConfig) -> None:
    """A sweeper that optimizes (Optuna) must optimize on validation data, never on the test set."""
    target = str(cfg.hydra.sweeper.get("_target_", ""))
    if "optuna" in target and not int(cfg.dataset.get("val_size", 0) or 0):
        raise ConfigError("a sweep that optimizes a metric needs a validation split, or it would choose on the "
                          "test set: set dataset.val_size (e.g. 5000; hydra/sweeper=lr_search sets it)")


def sweep_objective(summary: dict) -> float:
    """What a job returns to a searching sweeper: the validation accuracy of the checkpoint it selected
    (best.pt); without a validation split the final test accuracy (basic sweeps ignore it); NaN for a
    job that did not complete."""
    if summary.get("status") != "completed":
        return float("nan")
    value = summary.get("best/val_acc")
    value = summary.get("test/acc") if value is None else value
    return float("nan") if value is None else float(value)


def _check_distributed(cfg: DictConfig) -> None:
    """Settings that only matter under torchrun, checked before any process starts training."""
    from ..run.build import check_sync_batchnorm
    from ..run.validate import check_global_batch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_global_batch(int(cfg.trainer.batch_size), world)
    if world > 1:
        check_sync_batchnorm(cfg)


# --------------------------------------------------------------------------------------- entry point


def hydra_main(args: Sequence[str]) -> int:
    """Run ``cnnbench train`` with Hydra overrides ``args``; returns the process exit code."""
    from hydra.core.hydra_config import HydraConfig

    from ..run.train import train

    args = list(args)
    if HYDRA_INFO_FLAGS & set(args):
        return _run_hydra(args, lambda cfg: None)
    multirun = is_multirun(args)
    out_dir = preflight(args)
    extra = sweep_naming_overrides(args) if multirun else []
    if _given(args, "hydra.output_subdir") is None:
        extra.append("hydra.output_subdir=null")  # .hydra/ is written by the job, under the folder's lock
    if launched_by_torchrun():
        if multirun:
            raise ConfigError("-m sweeps cannot run under torchrun; launch each job with torchrun instead "
                              "(or use the submitit launcher)")
        extra += _torchrun_overrides(args, out_dir)
    elif not multirun and _given(args, "hydra.run.dir") is None:
        extra.append(f"hydra.run.dir={override_value(out_dir)}")  # the folder locked below, not a later ${now:}
    if multirun and _given(args, "hydra.sweep.dir") is None:
        resume = str(_given(args, RESUME_SWEEP_KEY)).lower() == "true"
        out_dir = str(find_sweep_to_resume(args)) if resume else out_dir
        extra.append(f"hydra.sweep.dir={out_dir}")  # the one folder this sweep's jobs go to
    elif multirun:
        out_dir = _given(args, "hydra.sweep.dir")
    outcomes: list[dict] = []

    def job(cfg: DictConfig) -> float:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            with run_folder_lock(run_dir, enabled=current().is_main):
                previous = prepare_resumed_job(cfg, run_dir) if cfg.get(RESUME_SWEEP_KEY) else None
                summary = previous or train(cfg, run_dir)
        except (RunFolderInUse, ResumeRefused) as exc:  # a sweep job refused: the sweep goes on
            logger.error("%s", exc)
            summary = {"status": REFUSED_STATUS[type(exc)], "error": f"{type(exc).__name__}: {exc}",
                       "run_dir": str(run_dir)}
        outcomes.append({k: summary.get(k) for k in ("status", "error", "run_dir")})
        return sweep_objective(summary)  # what Optuna maximizes

    with contextlib.ExitStack() as held:
        if not multirun:  # before Hydra writes anything into the folder
            _claim_run_folder(Path(_given(args, "hydra.run.dir") or out_dir), args, held)
        try:
            _run_hydra([*args, *extra], job)
        finally:
            shutdown()
    if multirun:
        return exit_code(merge_outcomes(sweep_outcomes(Path(out_dir)), outcomes), multirun=True)
    return exit_code(outcomes, multirun=False)


def _claim_run_folder(run_dir: Path, args: Sequence[str], held: contextlib.ExitStack) -> None:
    """A single run's checks on its folder before Hydra touches it: the resume is compatible, and no other
    process writes there (rank 0 takes the lock; under torchrun every rank learns the outcome)."""
    from ..config import compose_config
    from ..run.checkpoint import resolve_resume

    cfg = compose_config(overrides_only(args))
    settle_dataset(cfg)  # as the run will record it (its classes, channels, normalization)
    check_resume(cfg, resolve_resume(cfg, run_dir), announce=False)  # train() logs the changes
    ctx = current()
    refusal = None
    if ctx.is_main:
        try:
            held.enter_context(run_folder_lock(run_dir))
        except RunFolderInUse as exc:
            refusal = str(exc)
    refusal = broadcast_object(refusal, ctx)
    if refusal:
        raise RunFolderInUse(refusal)


def _torchrun_overrides(args: Sequence[str], out_dir: str | None) -> list[str]:
    """All ranks share rank 0's run folder; only rank 0 records Hydra's config and log file there."""
    ctx = init_from_env(str(_given(args, "device.type") or _given(args, "device") or "auto"))
    extra = []
    if _given(args, "hydra.run.dir") is None:
        extra.append(f"hydra.run.dir={override_value(broadcast_object(out_dir, ctx))}")
    if not ctx.is_main:
        extra += ["hydra/job_logging=stdout"]  # hydra.output_subdir=null: hydra_main adds it for every rank
    return extra


def _run_hydra(argv: list[str], task) -> int:
    import hydra

    from ..config import PRIMARY_CONFIG, config_dir
    from ..schema import register_schemas

    register_schemas()  # conf/'s files name their schemas
    saved = sys.argv
    sys.argv = ["cnnbench train", *argv]
    try:
        hydra.main(config_path=str(config_dir()), config_name=PRIMARY_CONFIG, version_base="1.3")(task)()
    finally:
        sys.argv = saved
    return 0
