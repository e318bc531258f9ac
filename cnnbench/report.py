"""``cnnbench report DIR``: one table, one CSV and one figure for every run folder under ``DIR``.

A *run folder* is any folder holding ``summary.json`` or ``.hydra/overrides.yaml``; a Hydra sweep folder,
a single run folder or any tree of them works. ``build_report`` reads them, ``write_report`` writes
``report.md``, ``report.csv`` and ``report.png``, ``cmd_report`` is the command line.

This module never imports torch: reading a few JSON files must stay fast on any machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.jsonl"
OVERRIDES_PATH = Path(".hydra") / "overrides.yaml"
CONFIG_PATH = Path(".hydra") / "config.yaml"
SEED_KEY = "trainer.seed"
MISSING = "missing"  # status of a run folder without a readable summary.json
# Statuses whose numbers are final or still meaningful; the rest sort last.
OK_STATUSES = ("completed", "interrupted", "running")
ERROR_WIDTH = 60  # characters of an error's first line shown in the table
REPORT_FILES = ("report.md", "report.csv", "report.png")
INLINE_LABELS_MAX = 6  # beyond this many runs or groups, points get numbers and the legend moves below

# The per-run numbers of the table and the CSV: (summary key, table header, formatter name).
METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("test/acc", "test acc", "acc"),
    ("train/acc", "train acc", "acc"),
    ("train/loss", "train loss", "loss"),
    ("epochs_completed", "epochs", "epochs"),
    ("wall_time_s", "wall time (s)", "seconds"),
    ("examples_per_sec", "examples/sec", "rate"),
    ("params", "params", "si"),
    ("flops_per_image", "FLOPs/image", "si"),
)
# Extra summary keys that only the CSV carries (it is the machine-readable, complete copy).
CSV_EXTRA_KEYS = ("best/test_acc", "epochs", "model", "resize", "seed", "device")


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
        return _number(self.summary.get("test/acc"))

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
        rates = [x for x in (_number(r.summary.get("examples_per_sec")) for r in self.finished) if x]
        return statistics.fmean(rates) if rates else None


@dataclass
class Report:
    """Everything ``write_report`` and the printed table need."""

    root: Path
    runs: list[RunResult]  # best test accuracy first, failed and missing last
    columns: list[str]  # override keys whose values differ between runs
    groups: list[SeedGroup]  # non-empty only when some settings ran with several seeds
    show_run_name: bool  # when the override columns alone do not tell the rows apart

    @property
    def group_columns(self) -> list[str]:
        return [c for c in self.columns if c != SEED_KEY]

    @property
    def not_ok(self) -> list[RunResult]:
        return [r for r in self.runs if not r.ok]

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


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (itself included) holding summary.json or .hydra/overrides.yaml."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if SUMMARY_NAME in filenames or (here / OVERRIDES_PATH).is_file():
            found.append(here)
        # Hidden folders (.hydra, .git, caches) never hold runs; pruning them keeps the walk short.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found, key=lambda p: _natural_key(str(p)))


def read_run(path: Path, root: Path) -> RunResult:
    """Read one run folder; never raises on a half-written or corrupt file."""
    summary, problem = _read_summary(path / SUMMARY_NAME)
    records = read_metrics(path / METRICS_NAME)
    config = _read_yaml(path / CONFIG_PATH)
    overrides_list = summary.get("overrides")
    if not isinstance(overrides_list, list):
        overrides_list = _read_yaml(path / OVERRIDES_PATH) or []
    merged = {**_fallbacks(config if isinstance(config, dict) else {}, records), **summary}
    if problem:
        merged.update(status=MISSING, error=problem)
    name = str(path.relative_to(root)) if path != root else path.resolve().name
    return RunResult(path=path, name=name, overrides=parse_overrides(overrides_list),
                     summary=merged, curve=accuracy_curve(records))


def _read_summary(path: Path) -> tuple[dict[str, Any], str | None]:
    """The summary and, when it cannot be used, why."""
    if not path.is_file():
        return {}, "no summary"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"unreadable {SUMMARY_NAME}: {exc}"
    if not isinstance(data, dict):
        return {}, f"{SUMMARY_NAME} is not a JSON object"
    return data, None


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
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+")
        if not sep or key.startswith("~") or key.split("/")[0].split(".")[0] == "hydra":
            continue  # deletions have no value; hydra.* settings (launcher, dirs) are not the experiment
        out[key] = value
    return out


def accuracy_curve(records: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """(epoch, test acc) of every evaluated epoch, in epoch order, the last record of an epoch winning."""
    points: dict[float, float] = {}
    for r in records:
        epoch, acc = _number(r.get("epoch")), _number(r.get("test/acc"))
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
        tested = [a for a in (_number(r.get("test/acc")) for r in epochs) if a is not None]
        rates = [x for x in (_number(r.get("throughput/examples_per_sec")) for r in epochs) if x]
        out.update({
            "epochs_completed": len({r.get("epoch") for r in epochs}),
            "train/loss": last.get("train/loss"),
            "train/acc": last.get("train/acc"),
            "test/acc": tested[-1] if tested else None,
            "best/test_acc": max(tested) if tested else None,
            "examples_per_sec": statistics.fmean(rates) if rates else None,
        })
    return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------------------- building


def build_report(root: Path) -> Report:
    """Read every run folder under ``root``. Raises FileNotFoundError when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    dirs = find_run_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"no run folders (with {SUMMARY_NAME} or {OVERRIDES_PATH}) under {root}")
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
    """Best test accuracy first; failed, diverged and missing runs last; folder order breaks ties."""
    def key(r: RunResult) -> tuple:
        acc = r.test_acc
        return (not r.ok, acc is None, -(acc or 0.0), _natural_key(r.name))

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


# ------------------------------------------------------------------------------------- formatting


def _number(value: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and null are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _natural_key(text: str) -> list:
    """'10_model=x' after '2_model=y': Hydra job numbers are not zero-padded."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def _si(value: float) -> str:
    """61706 -> '61.7k' (a copy of describe.human, which would import torch)."""
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            return f"{value:.3g}{prefix}" if prefix else f"{value:.0f}"
        value /= 1000
    return str(value)


def format_value(value: Any, kind: str) -> str:
    """One table cell; '-' for anything absent."""
    x = _number(value)
    if x is None:
        return "-"
    if kind == "acc":
        return f"{x:.4f}"
    if kind == "loss":
        return f"{x:.3f}"
    if kind == "seconds":
        return f"{x:.1f}"
    if kind == "rate":
        return f"{x:,.0f}"
    if kind == "si":
        return _si(x)
    return str(value)


def short_error(error: str | None, width: int = ERROR_WIDTH) -> str:
    """First non-empty line of an error, cut to ``width`` characters."""
    lines = [ln.strip() for ln in (error or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    first = lines[0]
    return first if len(first) <= width else first[: width - 1] + "…"


def run_rows(report: Report) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, cells and right-alignment flags of the per-run table."""
    header = (["run"] if report.show_run_name else []) + report.columns + ["status"]
    header += [title for _, title, _ in METRIC_COLUMNS]
    numeric = [False] * (len(header) - len(METRIC_COLUMNS)) + [True] * len(METRIC_COLUMNS)
    with_error = any(r.error for r in report.runs)
    if with_error:
        header.append("error")
        numeric.append(False)
    rows = []
    for r in report.runs:
        row = ([r.name] if report.show_run_name else []) + [r.overrides.get(k, "-") for k in report.columns]
        row.append(r.status)
        for key, _, kind in METRIC_COLUMNS:
            if kind == "epochs":
                done, planned = r.summary.get(key), r.summary.get("epochs")
                row.append(f"{done if done is not None else '-'}/{planned if planned is not None else '-'}")
            else:
                row.append(format_value(r.summary.get(key), kind))
        if with_error:
            row.append(short_error(r.error))
        rows.append(row)
    return header, rows, numeric


def group_rows(report: Report) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, cells and alignment of the seed-group table (mean ± sample std of test accuracy)."""
    keys = report.group_columns
    header = keys + ["seeds", "test acc mean", "± std", "examples/sec", "not completed"]
    numeric = [False] * len(keys) + [True] * 5
    rows = []
    for g in report.groups:
        rows.append([g.settings[k] for k in keys] + [
            str(len(g.finished)), format_value(g.mean, "acc"), format_value(g.std, "acc"),
            format_value(g.throughput, "rate"), str(len(g.runs) - len(g.finished)),
        ])
    return header, rows, numeric


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """A markdown table padded into aligned columns, so the same text reads well in a terminal."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")

    cells = [[cell(c) for c in header]] + [[cell(c) for c in row] for row in rows]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def outcome_line(report: Report) -> str:
    """'6 runs: 4 completed, 1 failed, 1 missing'."""
    counts: dict[str, int] = {}
    for r in report.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{len(report.runs)} run{'s' if len(report.runs) != 1 else ''}: {parts}"


def report_text(report: Report) -> str:
    """What the command prints: the per-run table, then the seed groups when there are some."""
    parts = [outcome_line(report), "", markdown_table(*run_rows(report))]
    if report.groups:
        parts += ["", f"seed groups (test accuracy over seeds, sample std; {SEED_KEY} varies within a group)",
                  "", markdown_table(*group_rows(report))]
    return "\n".join(parts)


def report_markdown(report: Report, png_name: str | None) -> str:
    """Content of report.md."""
    parts = [f"# cnnbench report: `{report.root}`", "", outcome_line(report), "", "## Runs", "",
             markdown_table(*run_rows(report))]
    if report.groups:
        parts += ["", "## Seed groups", "",
                  f"Runs equal but for `{SEED_KEY}`: mean and sample standard deviation of the final test "
                  "accuracy over the completed seeds.", "", markdown_table(*group_rows(report))]
    if report.not_ok:
        parts += ["", "## Runs that did not complete", ""]
        parts += [f"- `{r.name}`: **{r.status}**: {short_error(r.error, 500) or 'no error recorded'}"
                  for r in report.not_ok]
    if png_name:
        parts += ["", f"![test accuracy and throughput]({png_name})"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------- writing


def csv_rows(report: Report) -> tuple[list[str], list[list[Any]]]:
    """One row per run with raw (unrounded) numbers, the full error and the run folder."""
    # An override column named like a summary key ("model") already holds it: no duplicate header.
    summary_keys = [key for key, _, _ in METRIC_COLUMNS] + [k for k in CSV_EXTRA_KEYS if k not in report.columns]
    header = ["run", *report.columns, "status", *summary_keys, "overrides", "error", "path"]
    rows = []
    for r in report.runs:
        values = [r.summary.get(k) for k in summary_keys]
        rows.append([r.name, *(r.overrides.get(k, "") for k in report.columns), r.status,
                     *("" if v is None else v for v in values),
                     " ".join(f"{k}={v}" for k, v in r.overrides.items()), r.error or "", str(r.path)])
    return header, rows


def write_csv(report: Report, path: Path) -> None:
    header, rows = csv_rows(report)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_report(report: Report, out_dir: Path | None = None, plot: bool = True) -> dict[str, Path]:
    """Write report.md, report.csv and (with ``plot``) report.png into ``out_dir`` (default: the root)."""
    out_dir = Path(out_dir) if out_dir is not None else report.root
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name.split(".")[1]: out_dir / name for name in REPORT_FILES}
    write_csv(report, paths["csv"])
    if plot:
        plot_report(report, paths["png"])
    else:
        paths.pop("png")
    paths["md"].write_text(report_markdown(report, paths["png"].name if plot else None))
    return paths


# --------------------------------------------------------------------------------------- plotting


@dataclass
class _Series:
    """How one run, or one seed group, looks in both panels."""

    label: str  # short settings, e.g. "lenet_bn, lr=0.3"
    number: int  # rank in the table (1 = best): the point's tag when there are many
    color: Any
    marker: str


def plot_report(report: Report, path: Path) -> None:
    """Test accuracy per epoch (left) and final test accuracy against throughput (right)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the figure only goes to a file
    import matplotlib.pyplot as plt

    series = _series(report, plt.get_cmap("tab20"))
    numbered = len(series) > INLINE_LABELS_MAX
    columns = _legend_columns(series)
    legend_h = 0.19 * math.ceil(len(series) / columns) + 0.25 if numbered else 0.0  # inches below the panels
    fig, (ax_curve, ax_speed) = plt.subplots(1, 2, figsize=(13, 5.2 + legend_h))
    drawn = _plot_curves(report, ax_curve, series, numbered) | _plot_speed(report, ax_speed, series, numbered)
    title = f"cnnbench report: {report.root.resolve().name}, {outcome_line(report)}"
    if report.not_ok:  # they have no final accuracy to draw: say so rather than silently drop them
        title += " (failed and missing runs are not plotted)"
    fig.suptitle(title, fontsize=12)
    bottom = 0.0
    if numbered and drawn:
        # Many runs: one legend below both panels, numbered like the table rows and the points.
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=s.color, marker=s.marker, label=_legend_label(report, key, s, True))
                   for key, s in series.items() if key in drawn]
        fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
        bottom = legend_h / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _series(report: Report, cmap: Any) -> dict[str, _Series]:
    """One style per color key (a seed group or a run), numbered best first like the table."""
    keys = list(dict.fromkeys(report.color_key(r) for r in report.runs))
    # tab20 pairs a dark and a light shade: take all dark ones first so neighbours differ clearly.
    order = list(range(0, cmap.N, 2)) + list(range(1, cmap.N, 2))
    markers = "os^Dv"
    sample = {report.color_key(r): r for r in reversed(report.runs)}  # best run of each key
    return {k: _Series(label=short_label(report, sample[k]), number=i + 1,
                       color=cmap(order[i % len(order)]), marker=markers[(i // len(order)) % len(markers)])
            for i, k in enumerate(keys)}


def short_label(report: Report, run: RunResult) -> str:
    """'lenet_bn, lr=0.3': the model's name alone, other keys by their last dotted part when unique."""
    keys = report.group_columns if report.groups else report.columns
    if not keys:
        return report.color_key(run)
    tails = [k.split(".")[-1] for k in keys]
    parts = []
    for key, tail in zip(keys, tails):
        value = run.overrides.get(key, "-")
        name = tail if tails.count(tail) == 1 else key
        parts.append(value if key == "model" else f"{name}={value}")
    return ", ".join(parts)


def _legend_columns(series: dict[str, _Series]) -> int:
    longest = max((len(s.label) for s in series.values()), default=0) + 4
    return 4 if longest <= 28 else 3 if longest <= 40 else 2


def _legend_label(report: Report, key: str, s: _Series, numbered: bool) -> str:
    """'3: lenet, lr=0.1 (3 seeds)'; a run whose numbers are not final says its status."""
    runs = [r for r in report.runs if report.color_key(r) == key]
    label = f"{s.number}: {s.label}" if numbered else s.label
    if report.groups:
        n = sum(1 for r in runs if r.status == "completed" and r.test_acc is not None)
        return label + (f" ({n} seeds)" if n > 1 else "")
    return label + (f" ({runs[0].status})" if runs[0].status != "completed" else "")


def _plot_curves(report: Report, ax: Any, series: dict[str, _Series], numbered: bool) -> set[str]:
    """One line per run with a test accuracy curve; returns the series keys drawn."""
    drawn: set[str] = set()
    for r in report.runs:
        if not r.ok or not r.curve:
            continue
        key = report.color_key(r)
        s = series[key]
        # A seed group gets one legend entry; with many runs the figure's legend replaces this one.
        label = None if key in drawn or numbered else _legend_label(report, key, s, False)
        drawn.add(key)
        xs, ys = zip(*r.curve)
        ax.plot(xs, ys, marker=s.marker, markersize=3.5, linewidth=1.6, color=s.color, label=label,
                alpha=0.75 if report.groups else 1.0)
    ax.set_title("test accuracy per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.grid(True, alpha=0.35)
    if not drawn:
        _empty(ax, "no test accuracy logged yet")
        return drawn
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    if not numbered:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)  # the corner that hides the fewest points
    return drawn


def _empty(ax: Any, message: str) -> None:
    """A panel with nothing to draw: the message, without meaningless 0..1 ticks."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_speed(report: Report, ax: Any, series: dict[str, _Series], numbered: bool) -> set[str]:
    """Final test accuracy against examples/sec: seed groups as mean ± std, other runs as points.

    Returns the series keys drawn.
    """
    points = _speed_points(report)
    for g in report.groups:  # each seed faintly behind its group's mean, to show the spread
        for r in g.finished:
            x = _number(r.summary.get("examples_per_sec"))
            if x:
                ax.plot([x], [r.test_acc], ".", markersize=5, alpha=0.35, color=series[report.color_key(r)].color)
    for key, x, y, err, note in points:
        s = series[key]
        ax.errorbar([x], [y], yerr=None if err is None else [err], fmt=s.marker, markersize=7, capsize=5,
                    color=s.color)
        text = str(s.number) if numbered else s.label + note
        ax.annotate(text, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=8)
    ax.set_title("final test accuracy vs training throughput" + (" (seed mean ± std)" if report.groups else ""))
    ax.set_xlabel("training throughput (examples/sec, log scale)")
    ax.set_ylabel("final test accuracy (fraction correct)")
    ax.grid(True, which="both", alpha=0.35)
    ax.margins(y=0.12)  # keeps the top point's label inside the axes
    if not points:
        _empty(ax, "no completed run with a throughput")
        return set()
    ax.set_xscale("log")
    _pad_log_x(ax, [p[1] for p in points], room=1.6 if numbered else 3.0)
    return {p[0] for p in points}


def _speed_points(report: Report) -> list[tuple[str, float, float, float | None, str]]:
    """(series key, examples/sec, test acc, std or None, label note) of each plotted point."""
    points = []
    if report.groups:
        for g in report.groups:
            if g.mean is not None and g.throughput:
                n = len(g.finished)
                points.append((report.group_label(g.runs[0]), g.throughput, g.mean, g.std,
                               f" (n={n})" if n > 1 else ""))
        return points
    for r in report.runs:
        x = _number(r.summary.get("examples_per_sec"))
        if r.ok and r.test_acc is not None and x:
            # A running or interrupted run's accuracy is not final: its label says so.
            note = "" if r.status == "completed" else f" ({r.status})"
            points.append((report.label(r), x, r.test_acc, None, note))
    return points


def _pad_log_x(ax: Any, xs: Sequence[float], room: float) -> None:
    """Room on the right for the point labels, and plain tick labels ('6,000', not '6x10^3')."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lo, hi = min(xs) / 2.0, max(xs) * room
    ax.set_xlim(lo, hi)
    plain = FuncFormatter(lambda x, _pos: f"{x:,.0f}" if x >= 10 else f"{x:.3g}")
    ax.xaxis.set_major_formatter(plain)
    # Within about a decade there is at most one major tick: label the minor ones (2x, 3x, 5x) too.
    if math.log10(hi / lo) < 1.6:
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda x, pos: plain(x, pos) if round(x / 10 ** math.floor(math.log10(x))) in (2, 3, 5) else ""))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


# ------------------------------------------------------------------------------------ command line


def cmd_report(args: Sequence[str]) -> int:
    """``cnnbench report DIR [--out FOLDER]``: print the table, write report.md/.csv/.png; exit code."""
    parser = argparse.ArgumentParser(
        prog="cnnbench report",
        description="Compare the runs under DIR (a sweep folder, a run folder or any tree of them): "
                    "print a table and write report.md, report.csv and report.png.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder searched recursively for run folders")
    parser.add_argument("--out", type=Path, default=None, help="folder for the report files (default: DIR)")
    parser.add_argument("--no-plot", action="store_true", help="skip report.png (no matplotlib needed)")
    ns = parser.parse_args(list(args))
    try:
        report = build_report(ns.dir)
    except FileNotFoundError as exc:
        logger.error("cnnbench report: %s", exc)
        return 2
    print(report_text(report))
    paths = write_report(report, ns.out, plot=not ns.no_plot)
    logger.info("report written: %s", ", ".join(str(p) for p in paths.values()))
    return 0

