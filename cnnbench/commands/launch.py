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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import PRIMARY_CONFIG, ConfigSource, override_key, split_override, upgrade_overrides
from ..data.sources import SettledData, check_data_present, input_side_of, record_settled
from ..errors import ConfigError, ResumeRefused, RunFolderInUse
from ..models.external import use_config_dir
from ..run.distributed import broadcast_object, current, init_from_env, launched_by_torchrun, shutdown
from ..run.resume import check_resume
from ..run.selection import objective_name
from ..run.spec import RunSpec, config_key, trainer_section
from ..run.validate import validate_config
from ..runfolder.lock import run_folder_lock
from ..tracking.live import MlflowLoggerConfig, end_sweep, start_sweep, sweep_browse_lines
from .sweeps import (
    REFUSED_STATUS,
    RESUME_SWEEP_KEY,
    check_sweeper_direction,
    exit_code,
    find_sweep_to_resume,
    is_searching,
    job_return,
    merge_outcomes,
    prepare_resumed_job,
    sweep_closing_lines,
    sweep_naming_overrides,
    sweep_outcomes,
)

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class CommandLine:
    """``cnnbench train``'s arguments as Hydra's own parser reads them (the flags of any Hydra app)."""

    overrides: list[str]
    multirun: bool
    source: ConfigSource  # --config-name, --config-dir
    shows_only: bool  # --cfg, --info, --help, --hydra-help, -sc: Hydra prints and nothing runs


def parse_command_line(args: Sequence[str]) -> CommandLine:
    """Read ``args`` with the parser ``@hydra.main`` uses, so every Hydra flag means what it means there
    (``-cd DIR`` takes DIR as its value, not as an override); a bad flag exits 2 with Hydra's usage."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.prog = "cnnbench train"
    ns = parser.parse_args(list(args))
    extra_dir = None
    if ns.config_dir is not None:
        extra_dir = os.path.abspath(ns.config_dir)
        if not os.path.isdir(extra_dir):
            raise ConfigError(f"--config-dir {ns.config_dir}: no such folder ({extra_dir})")
    if ns.config_path is not None:
        raise ConfigError("--config-path replaces cnnbench's own config tree; add your configs with "
                          "--config-dir DIR (searched after the packaged tree) instead")
    shows_only = bool(ns.cfg or ns.info or ns.help or ns.hydra_help or ns.shell_completion)
    return CommandLine(overrides=upgrade_overrides(ns.overrides), multirun=bool(ns.multirun), shows_only=shows_only,
                       source=ConfigSource(config_name=ns.config_name or PRIMARY_CONFIG, extra_dir=extra_dir))


def override_value(text: str) -> str:
    """``text`` as a Hydra override value: as it is when plain, else quoted (spaces, commas, brackets)."""
    if re.fullmatch(r"[\w./:@+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _given(overrides: Sequence[str], key: str) -> str | None:
    """The value of ``key=value`` among the overrides, if present."""
    for a in overrides:
        given, value = split_override(a)
        if given == key:
            return value or ""
    return None


# ---------------------------------------------------------------------------------------- pre-flight


def _jobs(line: CommandLine) -> list[list[str]]:
    """Every job's overrides; sweeps a basic sweeper cannot expand (Optuna's intervals) keep fixed ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from ..run.validate import expand_sweep

    overrides = line.overrides
    if not line.multirun:
        return [overrides]
    try:
        return expand_sweep([*_basic_sweep_params(line), *overrides])
    except HydraException:
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except HydraException as exc:
            raise ConfigError(f"cannot parse the sweep: {str(exc).strip().splitlines()[0]}") from None
        return [[p.input_line for p in parsed if not p.is_sweep_override()]]


def _basic_sweep_params(line: CommandLine) -> list[str]:
    """A basic sweep's ``hydra.sweeper.params`` from the config (an exercise file's) as ``key=values``, which
    Hydra's BasicSweeper puts before the command line's (a key on both: the command line's wins), so every
    job they make is checked here too; none for other sweepers or a config that does not compose."""
    from hydra.errors import HydraException

    from ..config import compose_config

    try:
        sweeper = compose_config(line.overrides, return_hydra_config=True, source=line.source).hydra.sweeper
    except HydraException:
        return []  # preflight's own composition says why, in one line
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return []
    return [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]


class Checked(NamedTuple):
    """What :func:`preflight` found: the run or sweep folder, each job's checked spec by :func:`config_key`,
    and each job's ``hydra.mode`` as composed (None where the config leaves it to the command line)."""

    out_dir: str | None
    specs: dict[str, RunSpec]
    hydra_modes: tuple[Any, ...]


def preflight(line: CommandLine) -> Checked:
    """Compose and check every job before Hydra creates any folder, from the same config source Hydra
    will use (``--config-dir``, ``--config-name``); returns the run or sweep folder and each job's checked
    spec by :func:`config_key` (jobs that share a dataset share its settled data: it is read once).

    Raises :class:`ConfigError` with one sentence for the first bad job.
    """
    from hydra.errors import HydraException

    from ..config import compose_config, config_dir
    from ..run.validate import check_added_keys, check_output_dir, explain_override_error, flat_keys

    multirun, source = line.multirun, line.source
    folders = [config_dir(), *([Path(source.extra_dir)] if source.extra_dir else [])]
    groups = {p.name for folder in folders for p in folder.iterdir() if p.is_dir()}
    out_dir = None
    datasets: dict[str, DictConfig] = {}  # each distinct dataset of the jobs, checked once after every value
    sweeper_warnings: dict[str, None] = {}  # said once for the whole sweep, not once per job
    settled: dict[str, SettledData] = {}  # each distinct dataset (and input side), settled once
    specs: dict[str, RunSpec] = {}
    modes: list[Any] = []
    for job in _jobs(line):
        added = [o for o in job if o.startswith("+")]
        try:
            cfg = compose_config(job, return_hydra_config=True, source=source)
            fixed = _sweeper_fixed_params(cfg, job) if multirun else []
            if fixed:  # values a searching sweeper adds to every trial (lr_search's dataset.val_size)
                job = [*fixed, *job]
                cfg = compose_config(job, return_hydra_config=True, source=source)
        except HydraException as exc:
            raise ConfigError(explain_override_error(exc, flat_keys(compose_config([], source=source)))) from None
        if multirun:
            sweeper_warnings.update(dict.fromkeys(w for w in [_check_optimizing_sweep(cfg)] if w))
        if added:
            # The base keeps added groups (+exercise=...): the job's other overrides may set their keys.
            base = compose_config([o for o in job if not o.startswith("+") or override_key(o) in groups],
                                  source=source)
            check_added_keys(added, base, groups)
        out_dir = str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
        check_output_dir(out_dir)
        _check_distributed(cfg)
        modes.append(cfg.hydra.mode)
        with open_dict(cfg):
            del cfg["hydra"]  # its job-time values (hydra.job.num) do not exist yet
        key, data_key = config_key(cfg), f"{OmegaConf.to_yaml(cfg.dataset)}{input_side_of(cfg)}"
        datasets.setdefault(OmegaConf.to_yaml(cfg.dataset), cfg)
        if data_key in settled:
            record_settled(cfg, settled[data_key])
        spec = validate_config(cfg, settled.get(data_key))
        settled[data_key] = spec.settled
        specs[key] = spec
    for cfg in datasets.values():  # after every job's values: it may download
        check_data_present(cfg)
    for warning in sweeper_warnings:
        logger.warning("%s", warning)
    return Checked(out_dir, specs, tuple(modes))


def _checked(specs: dict[str, RunSpec], cfg: DictConfig) -> RunSpec | None:
    """The pre-launch check's spec of the job config ``cfg`` (Hydra's own composition of it), its data facts
    written into ``cfg``; None when the check did not see this job (a searching sweeper's trial, a job
    another process launches): ``train`` then checks it itself."""
    spec = specs.get(config_key(cfg))
    if spec is None:
        logger.debug("no pre-launch spec for this job: it is checked again")
        return None
    return spec.for_config(cfg)


def _sweeper_fixed_params(cfg: DictConfig, job: Sequence[str]) -> list[str]:
    """The fixed ``key=value`` entries of a searching sweeper's ``params`` (Optuna's), as overrides,
    except keys the command line sets itself (they win, as in the sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = cfg.hydra.sweeper.get("params") or {}
    given = {override_key(o) for o in job}
    entries = [f"{k}={v}" for k, v in params.items() if k not in given]
    parsed = OverridesParser.create().parse_overrides(entries)
    return [p.input_line for p in parsed if not p.is_sweep_override()]


def _check_optimizing_sweep(cfg: DictConfig) -> str | None:
    """A searching sweeper optimizes the jobs' objective (``trainer.objective``) on validation data, never on
    the test set, and in the objective's direction; returns a warning when its direction cannot be read."""
    warning = check_sweeper_direction(cfg.hydra.sweeper, objective_name(trainer_section(cfg)))
    if warning is None and is_searching(cfg.hydra.sweeper) and not int(cfg.dataset.get("val_size", 0) or 0):
        raise ConfigError("a sweep that optimizes a metric needs a validation split, or it would choose on the "
                          "test set: set dataset.val_size (e.g. 5000; hydra/sweeper=lr_search sets it)")
    return warning


def _check_distributed(cfg: DictConfig) -> None:
    """Settings that only matter under torchrun, checked before any process starts training."""
    from ..run.build import check_sync_batchnorm
    from ..run.validate import check_global_batch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_global_batch(int(cfg.trainer.batch_size), world)
    if world > 1:
        check_sync_batchnorm(cfg.trainer, cfg.device)  # the raw sections, read as their schema's objects


# --------------------------------------------------------------------------------------- entry point


def hydra_main(args: Sequence[str]) -> int:
    """Run ``cnnbench train`` with Hydra's command line ``args``; returns the process exit code."""
    from hydra.core.hydra_config import HydraConfig

    from ..run.train import train

    args = upgrade_overrides(args)  # logger=mlflow logger.KEY=... as earlier versions spelled it (also for --cfg)
    line = parse_command_line(args)
    if line.shows_only:  # Hydra prints (config, help, completion) and runs nothing
        # --info prints through the logging handler Hydra installs; not a second time through the command's
        for handler in logging.getLogger().handlers[:]:
            logging.getLogger().removeHandler(handler)
        return _run_hydra(args, lambda cfg: None, program="cnnbench" if _completion(args) else "cnnbench train")
    line = with_saved_settings(line)
    use_config_dir(line.source.extra_dir)  # model.target modules may live beside the user's configs
    multirun, overrides = line.multirun, line.overrides
    out_dir, specs, modes = preflight(line)
    extra = sweep_naming_overrides(overrides) if multirun else []
    if _given(overrides, "hydra.output_subdir") is None:
        extra.append("hydra.output_subdir=null")  # .hydra/ is written by the job, under the folder's lock
    if launched_by_torchrun():
        if multirun:
            raise ConfigError("-m sweeps cannot run under torchrun; launch each job with torchrun instead "
                              "(or use the submitit launcher)")
        extra += _torchrun_overrides(overrides, out_dir)
    elif not multirun and _given(overrides, "hydra.run.dir") is None:
        extra.append(f"hydra.run.dir={override_value(out_dir)}")  # the folder locked below, not a later ${now:}
    if multirun and _given(overrides, "hydra.sweep.dir") is None:
        resume = str(_given(overrides, RESUME_SWEEP_KEY)).lower() == "true"
        out_dir = str(find_sweep_to_resume(overrides)) if resume else out_dir
        extra.append(f"hydra.sweep.dir={out_dir}")  # the one folder this sweep's jobs go to
    elif multirun:
        out_dir = _given(overrides, "hydra.sweep.dir")
    outcomes: list[dict] = []

    def job(cfg: DictConfig) -> float | None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            with run_folder_lock(run_dir, enabled=current().is_main):
                previous = prepare_resumed_job(cfg, run_dir) if cfg.get(RESUME_SWEEP_KEY) else None
                summary = previous or train(cfg, run_dir, spec=_checked(specs, cfg))
        except (RunFolderInUse, ResumeRefused) as exc:  # a sweep job refused: the sweep goes on
            logger.error("%s", exc)
            summary = {"status": REFUSED_STATUS[type(exc)], "error": f"{type(exc).__name__}: {exc}",
                       "run_dir": str(run_dir)}
        outcomes.append({k: summary.get(k) for k in ("status", "error", "run_dir")})
        # what a searching sweeper optimizes; a failure as the sweeper counts one
        return job_return(summary, objective_name(trainer_section(cfg)),
                          str(HydraConfig.get().sweeper.get("_target_") or ""))

    tracked = _sweep_tracking(specs) if multirun else None
    if tracked is not None:  # the sweep's parent run, before its jobs (parallel launchers) look for it
        start_sweep(tracked, Path(out_dir))
    with contextlib.ExitStack() as held:
        if not multirun:  # before Hydra writes anything into the folder
            _claim_run_folder(Path(_given(overrides, "hydra.run.dir") or out_dir), next(iter(specs.values())), held)
        sweeper_failed = False
        try:
            # A single run's preflight composed exactly its overrides (Hydra's extras above set no hydra.mode)
            _run_hydra([*hydra_argv(line), *extra], job, mode=modes[0] if not multirun else _NOT_COMPOSED)
        except SystemExit:
            # A sweeper that fails after its jobs ran (Optuna when no trial completed: "No trials are
            # completed yet"), reported by Hydra: the jobs' outcome is still said, and the exit code is 1.
            if not multirun or not Path(out_dir).is_dir():
                raise
            sweeper_failed = True
        finally:
            shutdown()
    if multirun:
        merged = merge_outcomes(sweep_outcomes(Path(out_dir)), outcomes)
        if tracked is not None:
            end_sweep(tracked, Path(out_dir), merged)
        sweep_closing_lines(Path(out_dir), merged, sweep_browse_lines(tracked, Path(out_dir)))
        return max(exit_code(merged, multirun=True), int(sweeper_failed))
    return exit_code(outcomes, multirun=False)


def hydra_argv(line: CommandLine) -> list[str]:
    """``line`` as Hydra's command line again: its flags, then its (possibly completed) overrides."""
    argv = ["-m"] if line.multirun else []
    if line.source.extra_dir is not None:
        argv += ["--config-dir", line.source.extra_dir]
    if line.source.config_name != PRIMARY_CONFIG:
        argv += ["--config-name", line.source.config_name]
    return [*argv, *line.overrides]


def _completion(args: Sequence[str]) -> bool:
    return bool({"-sc", "--shell-completion"} & set(args))


# ------------------------------------------------------------------------------ continuing a run folder

# Settings of a start that are about that start, not about the run: never carried to the next one.
NOT_CARRIED = ("trainer.resume", "trainer.resume_force", "hydra.run.dir")


def with_saved_settings(line: CommandLine) -> CommandLine:
    """``trainer.resume=auto hydra.run.dir=RUN``: RUN's own settings, completed by what is given now.

    The overrides of the folder's latest start (``.hydra/overrides.yaml``, or the newest resume's) come
    first and the ones given now after them, so a key given now wins (and ``check_resume`` compares the
    result with the checkpoint as before); the folder's ``--config-dir``/``--config-name`` are used unless
    given now. Anything else (a sweep, no folder record) is returned as it is.
    """
    run_dir = _given(line.overrides, "hydra.run.dir")
    if line.multirun or run_dir is None or _given(line.overrides, "trainer.resume") in (None, "", "null"):
        return line
    record = latest_hydra_record(Path(run_dir))
    if record is None:
        return line
    given = {override_key(o) for o in line.overrides}
    saved = OmegaConf.load(record / "overrides.yaml")
    carried = [str(o) for o in saved if override_key(str(o)) not in (*NOT_CARRIED, *given)]
    source = line.source if line.source != ConfigSource() else _saved_source(record)
    if carried:
        logger.info("continuing %s with its own settings: %s", run_dir, " ".join(carried))
    return CommandLine(overrides=upgrade_overrides([*carried, *line.overrides]), multirun=False, source=source,
                       shows_only=False)


def latest_hydra_record(run_dir: Path) -> Path | None:
    """The ``.hydra`` folder of the run folder's latest start (a resume's, when there was one)."""
    from ..runfolder.names import HYDRA_DIR, RESUMES_DIR

    resumes = sorted((run_dir / RESUMES_DIR).glob("*/overrides.yaml"))
    if resumes:
        return resumes[-1].parent
    first = run_dir / HYDRA_DIR
    return first if (first / "overrides.yaml").is_file() else None


def _saved_source(record: Path) -> ConfigSource:
    """The config source a start recorded: its --config-name, and its --config-dir while it still exists."""
    hydra_yaml = record / "hydra.yaml"
    if not hydra_yaml.is_file():
        return ConfigSource()
    hydra_cfg = OmegaConf.load(hydra_yaml).hydra
    extra = [str(s.path) for s in hydra_cfg.runtime.get("config_sources", []) if s.provider == "command-line"]
    extra_dir = extra[0] if extra and os.path.isdir(extra[0]) else None
    return ConfigSource(config_name=str(hydra_cfg.job.get("config_name") or PRIMARY_CONFIG), extra_dir=extra_dir)


def _sweep_tracking(specs: dict[str, RunSpec]) -> MlflowLoggerConfig | None:
    """The first job's MLflow settings when the sweep logs to MLflow (``logger=mlflow``), else None."""
    first = next(iter(specs.values()), None)
    settings = first.sections.get("logger.mlflow") if first is not None else None
    return settings if isinstance(settings, MlflowLoggerConfig) else None


def _claim_run_folder(run_dir: Path, spec: RunSpec, held: contextlib.ExitStack) -> None:
    """A single run's checks on its folder before Hydra touches it: the resume is compatible, and no other
    process writes there (rank 0 takes the lock; under torchrun every rank learns the outcome). ``spec``:
    the run's checked config, its data settled as the run will record it."""
    from ..run.checkpoint import resolve_resume

    cfg = spec.cfg
    check_resume(cfg, resolve_resume(spec.trainer.resume, run_dir, announce=False), announce=False)  # train(): both
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


def _torchrun_overrides(overrides: Sequence[str], out_dir: str | None) -> list[str]:
    """All ranks share rank 0's run folder; only rank 0 records Hydra's config and log file there."""
    ctx = init_from_env(str(_given(overrides, "device.type") or _given(overrides, "device") or "auto"))
    extra = []
    if _given(overrides, "hydra.run.dir") is None:
        extra.append(f"hydra.run.dir={override_value(broadcast_object(out_dir, ctx))}")
    if not ctx.is_main:
        extra += ["hydra/job_logging=stdout"]  # hydra.output_subdir=null: hydra_main adds it for every rank
    return extra


_NOT_COMPOSED = object()  # no composition of the command line's overrides is at hand


def _run_hydra(argv: list[str], task, program: str = "cnnbench train", mode: Any = _NOT_COMPOSED) -> int:
    """``@hydra.main`` over ``task`` with ``argv``; ``program`` is what Hydra's help and shell completion
    name (completion registers for ``cnnbench`` itself, see :func:`complete`); ``mode``: the ``hydra.mode``
    that ``argv``'s config composes to, where it is known (see :func:`_mode_given`)."""
    import hydra

    from ..config import config_dir, register_all_schemas

    register_all_schemas()  # conf/'s files name their schemas
    saved = sys.argv
    sys.argv = [program, *argv]
    try:
        with _mode_given(mode):
            hydra.main(config_path=str(config_dir()), config_name=PRIMARY_CONFIG, version_base="1.3")(task)()
    finally:
        sys.argv = saved
    return 0


@contextlib.contextmanager
def _mode_given(mode: Any):
    """Hydra's ``@hydra.main`` composes a run's whole config twice: first (``Hydra.get_mode``) only to read
    ``hydra.mode`` from it, then for the run. Where the pre-launch check has composed the same overrides,
    the first composition is answered with the mode it found (that composition took 0.21 s in a trace of a
    LeNet-BN command, 2-core Xeon). Any other case, or a Hydra without that method, composes as Hydra does.
    """
    from hydra._internal.hydra import Hydra

    if mode is _NOT_COMPOSED or not callable(Hydra.__dict__.get("get_mode")):
        yield
        return
    original = Hydra.__dict__["get_mode"]
    Hydra.get_mode = lambda self, config_name, overrides: mode
    try:
        yield
    finally:
        Hydra.get_mode = original
