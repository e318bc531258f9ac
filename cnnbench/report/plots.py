"""report.png: test accuracy per epoch, and final test accuracy against one or more quantities of the runs
(``cnnbench report --against``: :data:`AXES`, throughput by default), one panel each.

The only module of cnnbench.report that uses matplotlib, and it imports it inside the functions:
``cnnbench report --no-plot`` needs no matplotlib, and reading the runs stays fast.
Never imports torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..figures import pyplot
from ..fmt import human
from .runs import Report, RunResult, finite_number, outcome_line

INLINE_LABELS_MAX = 6  # beyond this many runs or groups, the legend moves below and points get numbers...
NAMED_POINTS_MAX = 16  # ...unless every label is at most this long ('googlenet, 96 px'): then their names
NETWORK_LABEL_MIN = 3  # from this many differing settings, runs of different networks go by the network alone
# Where a point's label may go, tried in this order: (dx, dy) in points from the point, and its alignment.
# Beyond these, a label goes further up or down on a short leader line (LEADER_STEPS rows of ~11 points).
LABEL_SPOTS = ((6, 5, "left", "bottom"), (-6, 5, "right", "bottom"), (6, -5, "left", "top"),
               (-6, -5, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"))
LEADER_STEPS = 8
LABEL_GAP_PX = 2.0  # pixels kept between two labels
# Lines of equal runs lie on each other: each series also gets its own dash pattern and marker, so the
# one drawn last does not hide the others (a dashed line over a solid one shows both colours).
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = "osD^v"

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass
class _Series:
    """How one run, or one seed group, looks in every panel."""

    label: str  # short settings, e.g. "lenet_bn, lr=0.3"
    number: int  # rank in the table (1 = best): the point's tag when there are many
    color: Any
    marker: str
    linestyle: str


def _count(x: float) -> str:
    """'6,000' for a rate: a plain number, not '6x10^3'."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def _duration(seconds: float) -> str:
    """'30 s', '10 min', '2 h' for a time axis' ticks."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def run_time(run: RunResult) -> float | None:
    """The run's whole wall time in seconds: the command's, summed over its starts, where they were timed
    (``command_times.jsonl``); else the run's own clock (summary.json's ``wall_time_s``)."""
    return run.command_time_s if run.command_time_s is not None else finite_number(run.summary.get("wall_time_s"))


def _time_label(runs: Sequence[RunResult]) -> str:
    """Which clock the time axis shows: the whole commands', the runs' own, or the first where timed."""
    timed = [r.command_time_s is not None for r in runs]
    if all(timed):
        return "whole-command wall time, summed over its starts (log scale)"
    if not any(timed):
        return "wall time, the run's own clock: summary.json's wall_time_s (log scale)"
    return "wall time: the whole command's where timed (command_times.jsonl), else the run's (log scale)"


@dataclass(frozen=True)
class Axis:
    """One quantity the final test accuracy is drawn against: how it is read from a run and shown."""

    name: str  # the panel's title ends with it: "final test accuracy vs training throughput"
    value: Callable[[RunResult], float | None]
    label: Callable[[Sequence[RunResult]], str]  # the x axis' label, from the runs plotted
    tick: Callable[[float], str]
    # Major ticks at these values (nice durations) rather than at powers of ten, about one a decade; where
    # fewer than three of them fall inside the axis, ``fine_ticks`` too. None: matplotlib's.
    ticks: tuple[float, ...] | None = None
    fine_ticks: tuple[float, ...] = ()


# ``cnnbench report --against KEY``: each key one panel, the x axis logarithmic (the eight book networks span
# three decades of speed and parameters).
AXES: dict[str, Axis] = {
    "throughput": Axis("training throughput", lambda r: finite_number(r.summary.get("examples_per_sec")),
                       lambda runs: "training throughput (examples/sec, log scale)", _count),
    "time": Axis("wall time", run_time, _time_label, _duration,
                 ticks=(1, 10, 60, 600, 3600, 10 * 3600, 100 * 3600),
                 fine_ticks=(3, 30, 300, 1800, 3 * 3600, 30 * 3600)),
    "params": Axis("parameters", lambda r: finite_number(r.summary.get("params")),
                   lambda runs: "trainable parameters (log scale)", human),
    "flops": Axis("FLOPs", lambda r: finite_number(r.summary.get("flops_per_image")),
                  lambda runs: "forward FLOPs per image (2 per multiply-add, log scale)", human),
}
DEFAULT_AGAINST = ("throughput",)


@dataclass
class Point:
    """One point of a panel: a run, or a seed group's mean, and where its label was drawn."""

    key: str  # the series (color key) it belongs to
    x: float
    y: float  # final test accuracy (a seed group's mean)
    err: float | None  # a seed group's standard deviation
    text: str  # its label
    box: Box | None = None  # the label's pixels (x0, y0, x1, y1), once placed


@dataclass
class Panel:
    """A panel of final test accuracy against one :data:`AXES` quantity, as drawn."""

    xlabel: str
    points: list[Point] = field(default_factory=list)


def plot_report(report: Report, path: Path, against: Sequence[str] = DEFAULT_AGAINST) -> dict[str, Panel]:
    """Test accuracy per epoch, then final test accuracy against each quantity of ``against`` (keys of
    :data:`AXES`), one panel each: side by side for two panels, two columns for more.

    Returns each point panel's x label and points, with the pixel boxes of their labels as drawn, placed
    apart. Raises ValueError for a key not in :data:`AXES`."""
    unknown = [key for key in against if key not in AXES]
    if unknown or not against:
        raise ValueError(f"unknown --against {', '.join(unknown) or '(none)'}: choose from {', '.join(AXES)}")
    plt = pyplot()
    series = series_of(report, plt.get_cmap("tab20"))
    below = len(series) > INLINE_LABELS_MAX  # one legend below the panels rather than one in the curves'
    numbered = below and max(len(s.label) for s in series.values()) > NAMED_POINTS_MAX
    columns = _legend_columns(series)
    legend_h = 0.19 * math.ceil(len(series) / columns) + 0.25 if below else 0.0  # inches below the panels
    rows = math.ceil((1 + len(against)) / 2)  # two panels a row: the curves first, then one per quantity
    fig, grid = plt.subplots(rows, 2, figsize=(13, 5.2 * rows + legend_h), squeeze=False)
    axes = list(grid.flat)
    for spare in axes[1 + len(against):]:  # an odd number of panels leaves the last spot empty
        spare.remove()
    drawn = _plot_curves(report, axes[0], series, below)
    panels: dict[str, Panel] = {}
    for key, ax in zip(against, axes[1:], strict=False):
        panels[key] = _plot_against(report, ax, AXES[key], series, numbered)
        drawn |= {p.key for p in panels[key].points}
    title = f"cnnbench report: {report.root.resolve().name}, {outcome_line(report)}"
    if report.not_ok:  # they have no final accuracy to draw: say so rather than silently drop them
        title += " (failed and missing runs are not plotted)"
    fig.suptitle(title, fontsize=12)
    bottom = 0.0
    if below and drawn:
        # Many runs: one legend below the panels, numbered like the table rows and the points.
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=s.color, marker=s.marker, linestyle=s.linestyle,
                          label=_legend_label(report, key, s, numbered))
                   for key, s in series.items() if key in drawn]
        fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
        bottom = legend_h / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.set_dpi(110)  # the saved picture's: label boxes are measured in its pixels
    for panel, ax in zip(panels.values(), axes[1:], strict=False):  # after the layout: it moves the axes
        boxes = place_labels(ax, [(p.x, p.y, p.text, series[p.key].color) for p in panel.points])
        for point, box in zip(panel.points, boxes, strict=True):
            point.box = box
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return panels


def series_of(report: Report, cmap: Any) -> dict[str, _Series]:
    """One style per color key (a seed group or a run), numbered best first like the table."""
    keys = list(dict.fromkeys(report.color_key(r) for r in report.runs))
    # tab20 pairs a dark and a light shade: take all dark ones first so neighbours differ clearly.
    order = list(range(0, cmap.N, 2)) + list(range(1, cmap.N, 2))
    sample = {report.color_key(r): r for r in reversed(report.runs)}  # best run of each key
    return {k: _Series(label=short_label(report, sample[k]), number=i + 1, color=cmap(order[i % len(order)]),
                       marker=MARKERS[i % len(MARKERS)], linestyle=LINE_STYLES[i % len(LINE_STYLES)])
            for i, k in enumerate(keys)}


def short_label(report: Report, run: RunResult) -> str:
    """'lenet_bn, lr=0.3': the model's name alone, other keys by their last dotted part when unique; runs
    that differ in many settings but each in its network go by 'resnet18, 96 px' (:func:`label_keys`)."""
    keys = label_keys(report)
    if not keys:
        return report.color_key(run)
    tails = [k.split(".")[-1] for k in keys]
    parts = []
    for key, tail in zip(keys, tails, strict=True):
        value = run.settings.get(key, "-")
        name = tail if tails.count(tail) == 1 else key
        parts.append(value if key == "model" else f"{value} px" if key == "resize" and value.isdigit()
                     else f"{name}={value}")
    return ", ".join(parts)


def label_keys(report: Report) -> list[str]:
    """The settings a picture names each run (or seed group) by: those that differ, or -- when
    :data:`NETWORK_LABEL_MIN` or more differ (the book's recipes: model, input size, learning rate, batch
    size, precision, ...) and the network and its input size alone tell the runs apart -- those two."""
    keys = report.group_columns if report.groups else report.columns
    network = [k for k in ("model", "resize") if k in keys]
    if len(keys) < NETWORK_LABEL_MIN or "model" not in network:
        return keys
    named = {tuple(r.settings.get(k) for k in network) for r in report.runs}
    return network if len(named) == len({report.color_key(r) for r in report.runs}) else keys


def _legend_columns(series: dict[str, _Series]) -> int:
    longest = max((len(s.label) for s in series.values()), default=0) + 4
    # At fontsize 8 the 13-inch figure holds about 190 characters a line: long labels (runs differing in many
    # settings) get a column of their own rather than being cut at the figure's edges.
    return 4 if longest <= 28 else 3 if longest <= 40 else 2 if longest <= 90 else 1


def _legend_label(report: Report, key: str, s: _Series, numbered: bool) -> str:
    """'3: lenet, lr=0.1 (3 seeds)'; a run whose numbers are not final says its status."""
    runs = [r for r in report.runs if report.color_key(r) == key]
    label = f"{s.number}: {s.label}" if numbered else s.label
    if report.groups:
        n = sum(1 for r in runs if r.status == "completed" and r.test_acc is not None)
        return label + (f" ({n} seeds)" if n > 1 else "")
    return label + (f" ({runs[0].status})" if runs[0].status != "completed" else "")


def _plot_curves(report: Report, ax: Any, series: dict[str, _Series], below: bool) -> set[str]:
    """One line per run with a test accuracy curve; returns the series keys drawn."""
    drawn: set[str] = set()
    for r in report.runs:
        if not r.ok or not r.curve:
            continue
        key = report.color_key(r)
        s = series[key]
        # A seed group gets one legend entry; with many runs the figure's legend replaces this one.
        label = None if key in drawn or below else _legend_label(report, key, s, False)
        drawn.add(key)
        xs, ys = zip(*r.curve, strict=True)
        ax.plot(xs, ys, marker=s.marker, markersize=4, linewidth=1.6, linestyle=s.linestyle, color=s.color,
                label=label, alpha=0.75 if report.groups else 0.9)
    ax.set_title("test accuracy per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.grid(True, alpha=0.35)
    if not drawn:
        _empty(ax, "no test accuracy logged yet")
        return drawn
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
    if not below:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)  # the corner that hides the fewest points
    return drawn


def _empty(ax: Any, message: str) -> None:
    """A panel with nothing to draw: the message, without meaningless 0..1 ticks."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_against(report: Report, ax: Any, axis: Axis, series: dict[str, _Series], numbered: bool) -> Panel:
    """Final test accuracy against ``axis``' quantity: seed groups as mean ± std (each seed faintly behind),
    other runs as points. The points' labels are placed once the layout is done (:func:`place_labels`)."""
    points = _points(report, axis, series, numbered)
    for g in report.groups:  # each seed faintly behind its group's mean, to show the spread
        for r in g.finished:
            x = axis.value(r)
            if x:
                ax.plot([x], [r.test_acc], ".", markersize=5, alpha=0.35, color=series[report.color_key(r)].color)
    for p in points:
        s = series[p.key]
        ax.errorbar([p.x], [p.y], yerr=None if p.err is None else [p.err], fmt=s.marker, markersize=7, capsize=5,
                    color=s.color)
    plotted = [r for r in report.runs if r.ok and r.test_acc is not None and axis.value(r)]
    panel = Panel(xlabel=axis.label(plotted), points=points)
    ax.set_title(f"final test accuracy vs {axis.name}" + (" (seed mean ± std)" if report.groups else ""))
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel("final test accuracy (fraction correct)")
    ax.grid(True, which="both", alpha=0.35)
    ax.margins(y=0.12)  # keeps the top point's label inside the axes
    if not points:
        _empty(ax, f"no completed run with its {axis.name}")
        return panel
    ax.set_xscale("log")
    _pad_log_x(ax, axis, [p.x for p in points], room=1.6 if numbered else 3.0)
    ax.set_ylim(ax.get_ylim())  # fixed before the labels are placed: a later autoscale would move them
    return panel


def place_labels(ax: Any, labels: list[tuple[float, float, str, Any]]) -> list[Box]:
    """Write each point's label, in its colour, where it overlaps no label placed before it nor another
    point: the first free spot of :data:`LABEL_SPOTS`, else further up or down on a leader line. Returns
    the labels' boxes, in the order of ``labels``."""
    if not labels:
        return []
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    # Around each point a label keeps out of: a 7-point marker is ~11 px across at 110 dpi, and a label
    # passing just beside another point reads as that point's.
    marker_px = 9.0
    order = sorted(range(len(labels)), key=lambda i: (-labels[i][1], -labels[i][0]))  # top down, right first
    zones: list[Box] = []
    for x, y, _, _ in labels:
        px, py = ax.transData.transform((x, y))
        zones.append((px - marker_px, py - marker_px, px + marker_px, py + marker_px))
    taken: list[Box] = []  # labels placed so far
    boxes: list[Box] = [(0.0, 0.0, 0.0, 0.0)] * len(labels)
    for i in order:
        x, y, text, color = labels[i]
        others = [zone for j, zone in enumerate(zones) if j != i]
        box = None
        for dx, dy, ha, va, leader in _spots():
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha=ha,
                               va=va, color=color,
                               arrowprops={"arrowstyle": "-", "color": color, "lw": 0.6} if leader else None)
            extent = note.get_window_extent(renderer)
            box = (extent.x0, extent.y0, extent.x1, extent.y1)
            if _inside(box, inside) and not any(_overlap(box, other) for other in taken + others):
                break
            note.remove()
            box = None
        if box is None:  # nowhere free (dozens of equal points): the first spot, as before
            note = ax.annotate(text, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=8, color=color)
            extent = note.get_window_extent(renderer)
            box = (extent.x0, extent.y0, extent.x1, extent.y1)
        taken.append(box)
        boxes[i] = box
    return boxes


def _spots() -> list[tuple[float, float, str, str, bool]]:
    """Candidate label positions: beside the point, then rows above and below it with a leader line."""
    near = [(dx, dy, ha, va, False) for dx, dy, ha, va in LABEL_SPOTS]
    far = []
    for step in range(1, LEADER_STEPS + 1):
        rise = 9 + 11 * step  # points
        far += [(14, rise, "left", "bottom", True), (14, -rise, "left", "top", True),
                (-14, rise, "right", "bottom", True), (-14, -rise, "right", "top", True)]
    return near + far


def _inside(box: Box, area: Any) -> bool:
    return box[0] >= area.x0 and box[2] <= area.x1 and box[1] >= area.y0 and box[3] <= area.y1


def _overlap(a: Box, b: Box) -> bool:
    """Whether two boxes come closer than :data:`LABEL_GAP_PX`."""
    gap = LABEL_GAP_PX
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _points(report: Report, axis: Axis, series: dict[str, _Series], numbered: bool) -> list[Point]:
    """The points of a panel: each seed group's mean (x: the mean of its seeds') or each run with a final
    accuracy and the quantity, labelled by its number (many series) or its short label."""
    points = []
    if report.groups:
        for g in report.groups:
            xs = [x for x in (axis.value(r) for r in g.finished) if x]
            if g.mean is not None and xs:
                n = len(g.finished)
                key = report.group_label(g.runs[0])
                points.append(Point(key, statistics.fmean(xs), g.mean, g.std,
                                    _point_text(series[key], numbered, f" (n={n})" if n > 1 else "")))
        return points
    for r in report.runs:
        x = axis.value(r)
        if r.ok and r.test_acc is not None and x:
            # A running or interrupted run's accuracy is not final: its label says so.
            note = "" if r.status == "completed" else f" ({r.status})"
            key = report.label(r)
            points.append(Point(key, x, r.test_acc, None, _point_text(series[key], numbered, note)))
    return points


def _point_text(s: _Series, numbered: bool, note: str) -> str:
    return str(s.number) if numbered else s.label + note


def _pad_log_x(ax: Any, axis: Axis, xs: Sequence[float], room: float) -> None:
    """Room on the right for the point labels, and the axis' own tick labels ('6,000', '1.2M', '10 min')."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = min(xs) / 2.0, max(xs) * room
    ax.set_xlim(lo, hi)
    plain = FuncFormatter(lambda x, _pos: axis.tick(x))
    ax.xaxis.set_major_formatter(plain)
    if axis.ticks is not None:
        ticks = [t for t in axis.ticks if lo <= t <= hi]
        if len(ticks) < 3:
            ticks = sorted(ticks + [t for t in axis.fine_ticks if lo <= t <= hi])
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_formatter(NullFormatter())
    # Within about a decade there is at most one major tick: label the minor ones (2x, 3x, 5x) too.
    elif math.log10(hi / lo) < 1.6:
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda x, pos: plain(x, pos) if round(x / 10 ** math.floor(math.log10(x))) in (2, 3, 5) else ""))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())
