"""Reading run folders into a :class:`Report`: what ``cnnbench report`` knows about each run.

A *run folder* is any folder holding ``summary.json`` or ``.hydra/config.yaml`` (names in
:mod:`cnnbench.runfolder.names`). ``read_run`` reads one and never raises on a half-written file; a summary
that lacks numbers (a job still running) is completed from ``metrics.jsonl`` and ``.hydra/config.yaml``.
``build_report`` reads every run folder under a root, sorts them and finds the settings that differ and the
seed groups.

Runs are compared by meaning, not by how they were started: a run's *settings* come from its resolved
config (``.hydra/config.yaml``), so ``experiment=quickstart`` and ``model=lenet_bn optimizer=sgd_nesterov ...``
show the same model, and keys that only say where the data is or how the run was started
(:data:`BOOKKEEPING`) are never columns.

Never imports torch: reading a few JSON files must stay fast on any machine.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from ..config import split_override
from ..run.selection import DEFAULT_OBJECTIVE, best_index, objective_direction, objective_value, summary_objective
from ..runfolder.names import CONFIG, METRICS, OVERRIDES, SUMMARY, find_run_folders, natural_key, read_summary

logger = logging.getLogger(__package__)  # "cnnbench.report", the one name its log lines show

# The settings that say what a run is, by the short names TensorBoard's HParams tab uses too
# (cnnbench.runfolder.log.hparams_of): name -> path in the resolved config. Every other config key that
# differs between runs is a column under its dotted path.
SETTINGS: dict[str, str] = {
    "model": "model.name", "dataset": "dataset.name", "resize": "dataset.resize",
    "optimizer": "optimizer.name", "lr": "optimizer.lr", "momentum": "optimizer.momentum",
    "weight_decay": "optimizer.weight_decay", "scheduler": "scheduler.name", "augment": "augment.name",
    "batch_size": "trainer.batch_size", "epochs": "trainer.epochs", "seed": "trainer.seed",
    "precision": "device.precision", "device": "device.type",
}
# Settings whose summary.json value is what the run really used (the input side of a ``resize: null``
# run, the device ``device.type=auto`` chose); the config's request is the fallback.
FROM_SUMMARY = ("resize", "device")
# Config keys that say where the data is or how the run was started, not what it is: never columns.
BOOKKEEPING = frozenset({"dataset.root", "dataset.download", "trainer.resume", "trainer.resume_force",
                         "trainer.progress_bar", "resume_sweep"})
# Groups whose options carry their own keys: such a key (dataset.mean, scheduler.pct_start) is a column
# only when it differs between runs of the same option (two datasets differ in their means anyway).
OPTION_GROUPS = ("model", "dataset", "optimizer", "scheduler", "augment")  # each option has a name
SEED_KEY = "seed"
LOG_FILE = "train.log"  # Hydra's job log (hydra.job.name=train), appended to by every start
# One JSON line per start of the command that ran the run ({"start": s, "end": s, ...}, Unix seconds), written
# by scripts/reproduce_book.py around each `cnnbench train`: a run continued over several starts took their sum.
COMMAND_TIMES = "command_times.jsonl"
MISSING = "missing"  # status of a run folder without a readable summary.json
# Statuses whose numbers are final or still meaningful; the rest sort last.
OK_STATUSES = ("completed", "interrupted", "running")


# ------------------------------------------------------------------------------------------- data


@dataclass
class RunResult:
    """One run folder: its settings, overrides, summary (completed from metrics where absent) and curve."""

    path: Path
    name: str  # path relative to the report root, for humans (build_report keeps its shortest unique tail)
    overrides: dict[str, str]  # the command line's, for the CSV's record
    summary: dict[str, Any]
    curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, test acc)
    settings: dict[str, str] = field(default_factory=dict)  # setting name or dotted config key -> value
    started: str | None = None  # "2026-12-06 22:43", the first start's local time
    command_time_s: float | None = None  # whole-command wall seconds, summed over its starts (command_times.jsonl)

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or MISSING)

    @property
    def error(self) -> str | None:
        err = self.summary.get("error")
        return str(err) if err else None

    @property
    def test_acc(self) -> float | None:
        return finite_number(self.summary.get("test/acc"))

    @property
    def val_acc(self) -> float | None:
        """Validation accuracy of the checkpoint the run selected (best.pt); None without a split."""
        return finite_number(self.summary.get("best/val_acc"))

    @property
    def objective(self) -> str:
        """The metric a sweep chooses this run by (``trainer.objective``; val/acc before it existed)."""
        return summary_objective(self.summary)

    def objective_value(self, name: str) -> float | None:
        """The objective ``name`` of the checkpoint the run selected; None without a validation split."""
        return objective_value(self.summary, name)

    @property
    def ok(self) -> bool:
        """Whether the run sorts and plots with the good ones (not failed, diverged or missing)."""
        return self.status in OK_STATUSES


@dataclass
class SeedGroup:
    """Runs whose settings are equal except the seed (``trainer.seed``)."""

    settings: dict[str, str]  # the group's values of the differing keys, seed excluded
    runs: list[RunResult]

    @property
    def finished(self) -> list[RunResult]:
        """Completed runs with a test accuracy: the only ones averaged (others stopped at other epochs)."""
        return [r for r in self.runs if r.status == "completed" and r.test_acc is not None]

    @property
    def accs(self) -> list[float]:
        return [r.test_acc for r in self.finished]  # type: ignore[misc]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accs) if self.accs else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation; None below two seeds, where it is undefined."""
        return statistics.stdev(self.accs) if len(self.accs) >= 2 else None

    @property
    def throughput(self) -> float | None:
        rates = [x for x in (finite_number(r.summary.get("examples_per_sec")) for r in self.finished) if x]
        return statistics.fmean(rates) if rates else None


@dataclass
class Report:
    """Everything ``write_report`` and the printed table need."""

    root: Path
    runs: list[RunResult]  # best first (by validation accuracy when runs have it), failed and missing last
    columns: list[str]  # settings whose values differ between runs
    groups: list[SeedGroup]  # non-empty only when some settings ran with several seeds

    @property
    def group_columns(self) -> list[str]:
        return [c for c in self.columns if c != SEED_KEY]

    @property
    def not_ok(self) -> list[RunResult]:
        return [r for r in self.runs if not r.ok]

    @property
    def selects_on_validation(self) -> bool:
        """Whether any run held out a validation split: then runs are ranked and chosen by it."""
        return any(r.val_acc is not None for r in self.runs)

    @property
    def objective(self) -> str:
        """The objective the runs are chosen by: the one they recorded, val/acc when they differ."""
        return shared_objective(self.runs)

    @property
    def selected(self) -> RunResult | None:
        """The run a sweep picks: the completed one whose selected checkpoint has the best objective
        (``trainer.objective``: val/acc, val/loss; never chosen by test accuracy), the first of equals;
        None when no run has a validation split."""
        candidates = [r for r in self.runs if r.status == "completed"]
        index = best_index([r.objective_value(self.objective) for r in candidates], objective_direction(self.objective))
        return None if index is None else candidates[index]

    def label(self, run: RunResult, keys: Sequence[str] | None = None) -> str:
        """Short name of a run: its values of the differing keys (or its folder when they are none)."""
        keys = self.columns if keys is None else keys
        parts = [f"{k}={run.settings.get(k, '-')}" for k in keys]
        return ", ".join(parts) if parts else run.name

    def group_label(self, run: RunResult) -> str:
        """The label a run's seed group goes by (its settings without the seed)."""
        return self.label(run, self.group_columns) if self.group_columns else "all settings equal"

    def color_key(self, run: RunResult) -> str:
        """Seeds of one group share a color; otherwise each run has its own."""
        return self.group_label(run) if self.groups else self.label(run)


# ---------------------------------------------------------------------------------------- reading


def read_run(path: Path, root: Path) -> RunResult:
    """Read one run folder; never raises on a half-written or corrupt file."""
    summary, problem = read_summary(path)
    records = read_metrics(path / METRICS)
    config = _read_yaml(path / CONFIG)
    config = as_today(config, path) if isinstance(config, dict) and config else {}
    overrides_list = summary.get("overrides")
    if not isinstance(overrides_list, list):
        overrides_list = _read_yaml(path / OVERRIDES) or []
    merged = {**_fallbacks(config, records), **summary}
    if problem:
        merged.update(status=MISSING, error=problem)
    name = str(path.relative_to(root)) if path != root else path.resolve().name
    return RunResult(path=path, name=name, overrides=parse_overrides(overrides_list),
                     summary=merged, curve=accuracy_curve(records), settings=run_settings(config, summary),
                     started=start_time(path), command_time_s=command_time(path / COMMAND_TIMES))


def as_today(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """A run's recorded config through the preparation step (:func:`cnnbench.run.recorded.compose_recorded`):
    an older cnnbench's record in today's shape, so that its settings compare with today's runs key by key."""
    from omegaconf import OmegaConf

    from ..run.recorded import compose_recorded

    try:
        composed = OmegaConf.to_container(compose_recorded(OmegaConf.create(config), path), resolve=False)
    except Exception:  # noqa: BLE001 - a record OmegaConf cannot read: as it is (never raises, like read_run)
        return config
    return composed if isinstance(composed, dict) else config


def run_settings(config: dict[str, Any], summary: dict[str, Any]) -> dict[str, str]:
    """A run's settings as text: the :data:`SETTINGS` by name, then every other config key by its dotted
    path, :data:`BOOKKEEPING` left out. A run without a config (summary.json alone) has the settings its
    summary names (model, dataset, resize, epochs, seed, device)."""
    flat = flatten(config)
    out: dict[str, str] = {}
    for name, path in SETTINGS.items():
        present, value = path in flat, flat.pop(path, None)
        if summary.get(name) is not None and (name in FROM_SUMMARY or not present):
            present, value = True, summary[name]
        if present:
            out[name] = setting_text(value)
    out.update((key, setting_text(v)) for key, v in flat.items() if key not in BOOKKEEPING)
    return out


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def setting_text(value: Any) -> str:
    """A setting as the config spells it: 'null', 'true', '0.1', '[0.9, 0.999]'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(setting_text(v) for v in value) + "]"
    return str(value)


def start_time(path: Path) -> str | None:
    """When the run first started: the first time stamp of its log (Hydra's ``[2026-12-06 22:43:05,123]``,
    kept when the folder is copied), else the time ``.hydra/config.yaml`` was written (at the first start;
    a resume writes its record under ``.hydra/resumes/``); None when it has neither."""
    try:
        with (path / LOG_FILE).open(errors="replace") as f:
            first = f.readline()
        match = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d)", first)
        if match:
            return match.group(1)
    except OSError:
        pass
    try:
        return datetime.fromtimestamp((path / CONFIG).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    except OSError:
        return None


def command_time(path: Path) -> float | None:
    """The wall seconds of every timed start in ``command_times.jsonl``, summed; None without the file or a
    complete line (a start still running has no end yet)."""
    spans = []
    for record in read_metrics(path):  # the same JSON-lines reading: a cut-off line is skipped
        start, end = finite_number(record.get("start")), finite_number(record.get("end"))
        if start is not None and end is not None:
            spans.append(end - start)
    return sum(spans) if spans else None


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        logger.warning("ignoring %s: %s", path, exc)
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of metrics.jsonl; malformed lines (a run killed mid-write) are skipped."""
    if not path.is_file():
        return []
    records = []
    with path.open(errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def parse_overrides(items: Iterable[Any]) -> dict[str, str]:
    """``["model=lenet", "+x=1", "~y"]`` -> ``{"model": "lenet", "x": "1"}``; hydra's own keys dropped."""
    out: dict[str, str] = {}
    for item in items:
        key, value = split_override(str(item))
        if value is None or str(item).startswith("~") or key.split("/")[0].split(".")[0] == "hydra":
            continue  # deletions have no value; hydra.* settings (launcher, dirs) are not the experiment
        out[key] = value
    return out


def accuracy_curve(records: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(epoch, test acc) of every evaluated epoch, in epoch order, the last record of an epoch winning."""
    points: dict[float, float] = {}
    for r in records:
        epoch, acc = finite_number(r.get("epoch")), finite_number(r.get("test/acc"))
        if r.get("kind") == "epoch" and epoch is not None and acc is not None:
            points[epoch] = acc  # a resumed run may log an epoch twice: keep the later one
    return sorted(points.items())


def _fallbacks(config: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Values for a summary that lacks them (a job still running writes only its status)."""
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    out: dict[str, Any] = {"model": model.get("name"), "epochs": trainer.get("epochs"),
                           "seed": trainer.get("seed")}
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if epochs:
        last = epochs[-1]
        tested = [a for a in (finite_number(r.get("test/acc")) for r in epochs) if a is not None]
        rates = [x for x in (finite_number(r.get("throughput/examples_per_sec")) for r in epochs) if x]
        out.update({
            "epochs_completed": len({r.get("epoch") for r in epochs}),
            "train/loss": last.get("train/loss"),
            "train/acc": last.get("train/acc"),
            "test/acc": tested[-1] if tested else None,
            "examples_per_sec": statistics.fmean(rates) if rates else None,
        })
    return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------------------- building


def build_report(root: Path) -> Report:
    """Read every run folder under ``root``. Raises FileNotFoundError when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    dirs = find_run_folders(root)
    if not dirs:
        raise FileNotFoundError(f"no run folders (with {SUMMARY} or {CONFIG}) under {root}")
    runs = [read_run(d, root) for d in dirs]
    for run, name in zip(runs, short_names([r.name for r in runs]), strict=True):
        run.name = name
    runs = sort_runs(runs)
    columns = differing_keys(runs)
    return Report(root=root, runs=runs, columns=columns, groups=seed_groups(runs, columns))


def short_names(names: Sequence[str]) -> list[str]:
    """Each relative path cut to its shortest tail of folders that no other path ends with:
    'multirun/2026-12-06/23-04-31/3_model=lenet' -> '3_model=lenet' unless another sweep has that job too
    (the start time column dates it)."""
    parts = [Path(n).parts for n in names]
    out = []
    for mine in parts:
        for k in range(1, len(mine) + 1):
            if sum(p[-k:] == mine[-k:] for p in parts) == 1 or k == len(mine):
                out.append(str(Path(*mine[-k:])))
                break
    return out


def differing_keys(runs: Sequence[RunResult]) -> list[str]:
    """Settings whose value is not the same in every run: the named :data:`SETTINGS` first, then other
    config keys in first-seen order. A key of a group's option (``scheduler.pct_start``) counts only when
    it differs between runs of the same option (``scheduler.name``)."""
    keys: dict[str, None] = dict.fromkeys(SETTINGS)
    for r in runs:
        keys.update(dict.fromkeys(r.settings))
    return [k for k in keys if _differs(runs, k)]


def _differs(runs: Sequence[RunResult], key: str) -> bool:
    """Whether the runs that have ``key`` (a run without its config, or an option without that key, has
    nothing to compare) hold more than one value of it."""
    runs = [r for r in runs if key in r.settings]
    group = key.split(".")[0]
    if "." not in key or group not in OPTION_GROUPS:
        return len({r.settings[key] for r in runs}) > 1
    by_option: dict[str | None, set[str]] = {}
    for r in runs:
        option = r.settings.get(_setting_name(f"{group}.name") or f"{group}.name")
        by_option.setdefault(option, set()).add(r.settings[key])
    return any(len(values) > 1 for values in by_option.values())


def _setting_name(path: str) -> str | None:
    """The :data:`SETTINGS` name of a config path ("model.name" -> "model"), or None."""
    return next((name for name, p in SETTINGS.items() if p == path), None)


def shared_objective(runs: Sequence[RunResult]) -> str:
    """The objective every run with a validation split recorded; val/acc when they differ or none has one."""
    names = {r.objective for r in runs if r.objective_value(r.objective) is not None}
    return names.pop() if len(names) == 1 else DEFAULT_OBJECTIVE


def sort_runs(runs: Iterable[RunResult]) -> list[RunResult]:
    """Best first: by the objective of the selected checkpoint (``trainer.objective``, e.g. validation
    accuracy, higher first, or loss, lower first) when runs have a validation split (a ranking by test
    accuracy would be a choice made on the test set), else by final test accuracy; failed, diverged and
    missing runs last; folder order breaks ties."""
    runs = list(runs)
    objective = shared_objective(runs)
    by_val = any(r.objective_value(objective) is not None for r in runs)
    sign = -1.0 if not by_val or objective_direction(objective) == "maximize" else 1.0

    def key(r: RunResult) -> tuple:
        value = r.objective_value(objective) if by_val else r.test_acc
        return (not r.ok, value is None, sign * (value or 0.0), natural_key(r.name))

    return sorted(runs, key=key)


def seed_groups(runs: Sequence[RunResult], columns: Sequence[str]) -> list[SeedGroup]:
    """Group runs equal but for the seed; empty unless some group holds several seeds."""
    if SEED_KEY not in columns:
        return []
    keys = [c for c in columns if c != SEED_KEY]
    by_settings: dict[tuple, list[RunResult]] = {}
    for r in runs:
        by_settings.setdefault(tuple(r.settings.get(k) for k in keys), []).append(r)
    if all(len(g) < 2 for g in by_settings.values()):
        return []
    groups = [SeedGroup({k: g[0].settings.get(k, "-") for k in keys}, g) for g in by_settings.values()]
    return sorted(groups, key=lambda g: (g.mean is None, -(g.mean or 0.0)))


# ---------------------------------------------------------------------------------------- helpers


def finite_number(value: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and null are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def outcome_line(report: Report) -> str:
    """'6 runs: 4 completed, 1 failed, 1 missing'."""
    counts: dict[str, int] = {}
    for r in report.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{len(report.runs)} run{'s' if len(report.runs) != 1 else ''}: {parts}"
