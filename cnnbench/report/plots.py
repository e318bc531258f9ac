"""report.png: test accuracy per epoch (left) and final test accuracy against throughput (right).

The only module of cnnbench.report that uses matplotlib, and it imports it inside the functions:
``cnnbench report --no-plot`` needs no matplotlib, and reading the runs stays fast.
Never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..figures import pyplot
from .runs import Report, RunResult, finite_number, outcome_line

INLINE_LABELS_MAX = 6  # beyond this many runs or groups, points get numbers and the legend moves below
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


@dataclass
class _Series:
    """How one run, or one seed group, looks in both panels."""

    label: str  # short settings, e.g. "lenet_bn, lr=0.3"
    number: int  # rank in the table (1 = best): the point's tag when there are many
    color: Any
    marker: str
    linestyle: str


def plot_report(report: Report, path: Path) -> list[tuple[float, float, float, float]]:
    """Test accuracy per epoch (left) and final test accuracy against throughput (right).

    Returns the pixel boxes (x0, y0, x1, y1) of the right panel's point labels as drawn, placed apart."""
    plt = pyplot()
    series = series_of(report, plt.get_cmap("tab20"))
    numbered = len(series) > INLINE_LABELS_MAX
    columns = _legend_columns(series)
    legend_h = 0.19 * math.ceil(len(series) / columns) + 0.25 if numbered else 0.0  # inches below the panels
    fig, (ax_curve, ax_speed) = plt.subplots(1, 2, figsize=(13, 5.2 + legend_h))
    labels: list[tuple[float, float, str, Any]] = []  # (x, y, text, colour) of each point of the right panel
    drawn = _plot_curves(report, ax_curve, series, numbered) | _plot_speed(report, ax_speed, series, numbered,
                                                                            labels)
    title = f"cnnbench report: {report.root.resolve().name}, {outcome_line(report)}"
    if report.not_ok:  # they have no final accuracy to draw: say so rather than silently drop them
        title += " (failed and missing runs are not plotted)"
    fig.suptitle(title, fontsize=12)
    bottom = 0.0
    if numbered and drawn:
        # Many runs: one legend below both panels, numbered like the table rows and the points.
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=s.color, marker=s.marker, linestyle=s.linestyle,
                          label=_legend_label(report, key, s, True))
                   for key, s in series.items() if key in drawn]
        fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
        bottom = legend_h / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.set_dpi(110)  # the saved picture's: label boxes are measured in its pixels
    boxes = place_labels(ax_speed, labels)  # after the layout: it moves the axes
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return boxes


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
    """'lenet_bn, lr=0.3': the model's name alone, other keys by their last dotted part when unique."""
    keys = report.group_columns if report.groups else report.columns
    if not keys:
        return report.color_key(run)
    tails = [k.split(".")[-1] for k in keys]
    parts = []
    for key, tail in zip(keys, tails, strict=True):
        value = run.settings.get(key, "-")
        name = tail if tails.count(tail) == 1 else key
        parts.append(value if key == "model" else f"{name}={value}")
    return ", ".join(parts)


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
    if not numbered:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)  # the corner that hides the fewest points
    return drawn


def _empty(ax: Any, message: str) -> None:
    """A panel with nothing to draw: the message, without meaningless 0..1 ticks."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_speed(report: Report, ax: Any, series: dict[str, _Series], numbered: bool,
                labels: list[tuple[float, float, str, Any]]) -> set[str]:
    """Final test accuracy against examples/sec: seed groups as mean ± std, other runs as points.

    Returns the series keys drawn; each point's label goes to ``labels``, placed once the layout is done
    (:func:`place_labels`).
    """
    points = _speed_points(report)
    for g in report.groups:  # each seed faintly behind its group's mean, to show the spread
        for r in g.finished:
            x = finite_number(r.summary.get("examples_per_sec"))
            if x:
                ax.plot([x], [r.test_acc], ".", markersize=5, alpha=0.35, color=series[report.color_key(r)].color)
    for key, x, y, err, note in points:
        s = series[key]
        ax.errorbar([x], [y], yerr=None if err is None else [err], fmt=s.marker, markersize=7, capsize=5,
                    color=s.color)
        labels.append((x, y, str(s.number) if numbered else s.label + note, s.color))
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
    ax.set_ylim(ax.get_ylim())  # fixed before the labels are placed: a later autoscale would move them
    return {p[0] for p in points}


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def place_labels(ax: Any, labels: list[tuple[float, float, str, Any]]) -> list[Box]:
    """Write each point's label, in its colour, where it overlaps no label placed before it nor another
    point: the first free spot of :data:`LABEL_SPOTS`, else further up or down on a leader line. Returns
    the labels' boxes."""
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
    boxes = []
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
        boxes.append(box)
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
        x = finite_number(r.summary.get("examples_per_sec"))
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
