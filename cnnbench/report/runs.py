"""Reading run folders into a :class:`Report`: what ``cnnbench report`` knows about each run.

A *run folder* is any folder holding ``summary.json`` or ``.hydra/overrides.yaml`` (names in
:mod:`cnnbench.runfolder.names`). ``read_run`` reads one and never raises on a half-written file; a summary
that lacks numbers (a job still running) is completed from ``metrics.jsonl`` and ``.hydra/config.yaml``.
``build_report`` reads every run folder under a root, sorts them and finds the override keys that
differ and the seed groups.

Never imports torch: reading a few JSON files must stay fast on any machine.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import split_override
from ..runfolder.names import CONFIG, METRICS, OVERRIDES, SUMMARY, find_run_folders, natural_key, read_summary

logger = logging.getLogger(__package__)  # "cnnbench.report", the one name its log lines show

SEED_KEY = "trainer.seed"
MISSING = "missing"  # status of a run folder without a readable summary.json
# Statuses whose numbers are final or still meaningful; the rest sort last.
OK_STATUSES = ("completed", "interrupted", "running")


# ------------------------------------------------------------------------------------------- data


@dataclass
class RunResult:
    """One run folder: its overrides, its summary (completed from metrics where absent) and its curve."""

    path: Path
    name: str  # path relative to the report root, for humans
    overrides: dict[str, str]
    summary: dict[str, Any]
    curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, test acc)

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
    def ok(self) -> bool:
        """Whether the run sorts and plots with the good ones (not failed, diverged or missing)."""
        return self.status in OK_STATUSES


@dataclass
class SeedGroup:
    """Runs whose overrides are equal except ``trainer.seed``."""

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
    columns: list[str]  # override keys whose values differ between runs
    groups: list[SeedGroup]  # non-empty only when some settings ran with several seeds
    show_run_name: bool  # when the override columns alone do not tell the rows apart

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
    def selected(self) -> RunResult | None:
        """The run a sweep picks: the completed one whose selected checkpoint has the best validation
        accuracy (never chosen by test accuracy); None when no run has a validation split."""
        candidates = [r for r in self.runs if r.status == "completed" and r.val_acc is not None]
        return max(candidates, key=lambda r: r.val_acc) if candidates else None

    def label(self, run: RunResult, keys: Sequence[str] | None = None) -> str:
        """Short name of a run: its values of the differing keys (or its folder when they are none)."""
        keys = self.columns if keys is None else keys
        parts = [f"{k}={run.overrides.get(k, '-')}" for k in keys]
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
    overrides_list = summary.get("overrides")
    if not isinstance(overrides_list, list):
        overrides_list = _read_yaml(path / OVERRIDES) or []
    merged = {**_fallbacks(config if isinstance(config, dict) else {}, records), **summary}
    if problem:
        merged.update(status=MISSING, error=problem)
    name = str(path.relative_to(root)) if path != root else path.resolve().name
    return RunResult(path=path, name=name, overrides=parse_overrides(overrides_list),
                     summary=merged, curve=accuracy_curve(records))


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
    runs = sort_runs([read_run(d, root) for d in dirs])
    columns = differing_keys(runs)
    labels = [tuple(r.overrides.get(k) for k in columns) for r in runs]
    show_name = not columns or len(set(labels)) < len(labels)
    return Report(root=root, runs=runs, columns=columns, groups=seed_groups(runs, columns),
                  show_run_name=show_name)


def differing_keys(runs: Sequence[RunResult]) -> list[str]:
    """Override keys whose value is not the same in every run, in first-seen order."""
    keys: dict[str, None] = {}
    for r in runs:
        keys.update(dict.fromkeys(r.overrides))
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def sort_runs(runs: Iterable[RunResult]) -> list[RunResult]:
    """Best first: by the validation accuracy of the selected checkpoint when runs have a validation
    split (a ranking by test accuracy would be a choice made on the test set), else by final test
    accuracy; failed, diverged and missing runs last; folder order breaks ties."""
    runs = list(runs)
    by_val = any(r.val_acc is not None for r in runs)

    def key(r: RunResult) -> tuple:
        acc = r.val_acc if by_val else r.test_acc
        return (not r.ok, acc is None, -(acc or 0.0), natural_key(r.name))

    return sorted(runs, key=key)


def seed_groups(runs: Sequence[RunResult], columns: Sequence[str]) -> list[SeedGroup]:
    """Group runs equal but for ``trainer.seed``; empty unless some group holds several seeds."""
    if SEED_KEY not in columns:
        return []
    by_settings: dict[tuple, list[RunResult]] = {}
    for r in runs:
        settings = tuple(sorted((k, v) for k, v in r.overrides.items() if k != SEED_KEY))
        by_settings.setdefault(settings, []).append(r)
    if all(len(g) < 2 for g in by_settings.values()):
        return []
    keys = [c for c in columns if c != SEED_KEY]
    groups = [SeedGroup({k: g[0].overrides.get(k, "-") for k in keys}, g) for g in by_settings.values()]
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
