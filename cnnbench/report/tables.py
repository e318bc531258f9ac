"""The report as text: table cells, markdown tables, the printed report, report.md and report.csv.

``report_text`` is what ``cnnbench report`` prints; ``write_report`` writes report.md, report.csv and
(through :mod:`cnnbench.report.plots`) report.png.

Never imports torch.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fmt import human
from .plots import DEFAULT_AGAINST, plot_report
from .runs import SEED_KEY, Report, finite_number, outcome_line

ERROR_WIDTH = 60  # characters of an error's first line shown in the table
REPORT_FILES = ("report.md", "report.csv", "report.png")

# The per-run numbers of the table and the CSV: (summary key, table header, formatter name).
METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("test/acc", "test acc", "acc"),
    ("train/acc", "train acc", "acc"),
    ("train/loss", "train loss", "loss"),
    ("epochs_completed", "epochs done", "epochs"),
    ("wall_time_s", "wall time (s)", "seconds"),
    ("examples_per_sec", "examples/sec", "rate"),
    ("params", "params", "si"),
    ("flops_per_image", "FLOPs/image", "si"),
)
# Shown when some run held out a validation split: the checkpoint it selected (best.pt) and that
# checkpoint's test accuracy.
SELECTION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("best/val_acc", "val acc (best)", "acc"),
    ("best/test_acc", "test acc (best)", "acc"),
    ("best/epoch", "best epoch", "int"),
)
# Extra summary keys that only the CSV carries (it is the machine-readable, complete copy).
CSV_EXTRA_KEYS = ("val/acc", "best/val_acc", "best/test_acc", "best/epoch", "monitor", "objective",
                  "objective_value", "stop_reason",
                  "time_to_target_s", "epochs",
                  "model", "resize", "seed", "device")


# ------------------------------------------------------------------------------------------ cells


def format_value(value: Any, kind: str) -> str:
    """One table cell; '-' for anything absent."""
    x = finite_number(value)
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
        return human(x)
    if kind == "int":
        return f"{x:.0f}"
    return str(value)


def book_cell(book: Any) -> str:
    """'yes (test above 0.776-0.779)' / 'no: train loss 0.520 vs 0.469-0.469' / '-' for runs that are not a
    book recipe (``summary["book"]``, written by cnnbench.book.results)."""
    if not isinstance(book, dict):
        return "-"
    test = book.get("test_acc") or {}
    low, high = (test.get("book") or [None, None])[:2]
    span = f" {low:.3f}-{high:.3f}" if low is not None and high is not None else ""
    test_part = f"test {test.get('position', '?')}{span}"
    if book.get("reproduced"):
        return f"yes ({test_part})"
    misses = [f"{name.replace('_', ' ')} {item['value']:.3f} vs {item['book'][0]:.3f}-{item['book'][1]:.3f}"
              for name in ("train_loss", "train_acc") if not (item := book.get(name) or {}).get("ok", True)]
    if test.get("position") == "below":
        misses.append(test_part)
    return "no: " + "; ".join(misses)


def short_error(error: str | None, width: int = ERROR_WIDTH) -> str:
    """First non-empty line of an error, cut to ``width`` characters."""
    lines = [ln.strip() for ln in (error or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    first = lines[0]
    return first if len(first) <= width else first[: width - 1] + "…"


# ----------------------------------------------------------------------------------------- tables


# Shown when some run had a trainer.target_acc and reached it.
TARGET_COLUMNS: tuple[tuple[str, str, str], ...] = (("time_to_target_s", "time to target (s)", "seconds"),)


def metric_columns(report: Report) -> tuple[tuple[str, str, str], ...]:
    """The number columns of this report: the selection and target columns only when some run has them."""
    reached = any(finite_number(r.summary.get("time_to_target_s")) is not None for r in report.runs)
    selection = SELECTION_COLUMNS if report.selects_on_validation else ()
    if selection and report.objective == "val/loss":  # the figure the runs are chosen by, shown first
        selection = (("best/val_loss", "val loss (best)", "loss"), *selection)
    return selection + METRIC_COLUMNS + (TARGET_COLUMNS if reached else ())


def run_rows(report: Report) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, cells and right-alignment flags of the per-run table."""
    columns = metric_columns(report)
    header = ["run", "started", *report.columns, "status"]
    header += [title for _, title, _ in columns]
    numeric = [False] * (len(header) - len(columns)) + [True] * len(columns)
    with_book = any(isinstance(r.summary.get("book"), dict) for r in report.runs)
    if with_book:
        header.append("book")
        numeric.append(False)
    with_error = any(r.error for r in report.runs)
    if with_error:
        header.append("error")
        numeric.append(False)
    rows = []
    selected = report.selected
    for r in report.runs:
        row = [r.name, r.started or "-", *(r.settings.get(k, "-") for k in report.columns)]
        row.append(r.status + (" (selected)" if r is selected else ""))
        for key, _, kind in columns:
            if kind == "epochs":
                done, planned = r.summary.get(key), r.summary.get("epochs")
                row.append(f"{done if done is not None else '-'}/{planned if planned is not None else '-'}")
            else:
                row.append(format_value(r.summary.get(key), kind))
        if with_book:
            row.append(book_cell(r.summary.get("book")))
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
        padded = (c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))
        return "| " + " | ".join(padded) + " |"

    dashes = (("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric, strict=True))
    rule = "|" + "|".join(dashes) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


# ----------------------------------------------------------------------------------------- report


# The words of each objective (trainer.objective) in the selection line: (name, short name, cell format).
OBJECTIVE_WORDS = {"val/acc": ("validation accuracy", "val acc", "acc"),
                   "val/loss": ("validation loss", "val loss", "loss")}


def selection_line(report: Report) -> str | None:
    """'selected by validation accuracy: model=lenet_bn, optimizer.lr=0.3 (val acc 0.9123; test acc of
    that checkpoint 0.9050)', by the runs' objective, or None when no run held out a validation split."""
    r = report.selected
    if r is None:
        return None
    words, short, kind = OBJECTIVE_WORDS[report.objective]
    return (f"selected by {words}: {report.label(r)} ({short} "
            f"{format_value(r.objective_value(report.objective), kind)}; "
            f"test acc of that checkpoint {format_value(r.summary.get('best/test_acc'), 'acc')}, "
            f"epoch {format_value(r.summary.get('best/epoch'), 'int')})")


def report_text(report: Report) -> str:
    """What the command prints: the per-run table, then the seed groups when there are some."""
    parts = [outcome_line(report)]
    if selection_line(report):
        parts.append(selection_line(report))
    parts += ["", markdown_table(*run_rows(report))]
    if report.groups:
        parts += ["", f"seed groups (test accuracy over seeds, sample std; {SEED_KEY} varies within a group)",
                  "", markdown_table(*group_rows(report))]
    return "\n".join(parts)


def report_markdown(report: Report, png_name: str | None) -> str:
    """Content of report.md."""
    parts = [f"# cnnbench report: `{report.root}`", "", outcome_line(report)]
    if selection_line(report):
        parts += ["", f"**{selection_line(report)}**"]
    parts += ["", "## Runs", "", markdown_table(*run_rows(report))]
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
    # A settings column named like a summary key ("model") already holds it: no duplicate header.
    summary_keys = [key for key, _, _ in METRIC_COLUMNS] + [k for k in CSV_EXTRA_KEYS if k not in report.columns]
    summary_keys = list(dict.fromkeys(summary_keys))
    header = ["run", "started", *report.columns, "status", *summary_keys, "overrides", "error", "path"]
    rows = []
    for r in report.runs:
        values = [r.summary.get(k) for k in summary_keys]
        rows.append([r.name, r.started or "", *(r.settings.get(k, "") for k in report.columns), r.status,
                     *("" if v is None else v for v in values),
                     " ".join(f"{k}={v}" for k, v in r.overrides.items()), r.error or "", str(r.path)])
    return header, rows


def write_csv(report: Report, path: Path) -> None:
    header, rows = csv_rows(report)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_report(report: Report, out_dir: Path | None = None, plot: bool = True,
                 against: Sequence[str] = DEFAULT_AGAINST) -> dict[str, Path]:
    """Write report.md, report.csv and (with ``plot``) report.png into ``out_dir`` (default: the root), its
    point panels against each quantity of ``against`` (:data:`cnnbench.report.plots.AXES`)."""
    out_dir = Path(out_dir) if out_dir is not None else report.root
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name.split(".")[1]: out_dir / name for name in REPORT_FILES}
    write_csv(report, paths["csv"])
    if plot:
        plot_report(report, paths["png"], against)
    else:
        paths.pop("png")
    paths["md"].write_text(report_markdown(report, paths["png"].name if plot else None))
    return paths
