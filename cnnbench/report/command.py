"""``cnnbench report DIR [--out FOLDER] [--no-plot] [--against KEY ...]``: the command line of the report.

Never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..errors import RunFolderError
from ..fmt import command_parser
from .plots import AXES, DEFAULT_AGAINST
from .runs import build_report
from .tables import report_text, write_report

logger = logging.getLogger(__package__)  # "cnnbench.report", the one name its log lines show


def cmd_report(args: Sequence[str]) -> int:
    """``cnnbench report DIR [--out FOLDER]``: print the table, write report.md/.csv/.png; exit code.

    Raises :class:`RunFolderError` when DIR holds no run folder (the CLI prints it as one line, exit 2)."""
    parser = command_parser(
        "cnnbench report",
        "Compare the runs under DIR (a sweep folder, a run folder or any tree of them): print a table of the "
        "settings that differ between them (from each run's resolved config) and their results, and write "
        "report.md, report.csv and report.png.",
    )
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder searched recursively for run folders")
    parser.add_argument("--out", type=Path, default=None, help="folder for the report files (default: DIR)")
    parser.add_argument("--no-plot", action="store_true", help="skip report.png (no matplotlib needed)")
    parser.add_argument("--against", nargs="+", choices=list(AXES), default=list(DEFAULT_AGAINST), metavar="KEY",
                        help="report.png's panels of final test accuracy against KEY, one each: "
                             f"{', '.join(AXES)} (default: {' '.join(DEFAULT_AGAINST)}); time is the whole "
                             "command's wall time where command_times.jsonl timed it, else the run's")
    ns = parser.parse_args(list(args))
    try:
        report = build_report(ns.dir)
    except FileNotFoundError as exc:  # printed like every command's errors: "cnnbench report: error: ..."
        raise RunFolderError(str(exc)) from exc
    print(report_text(report))
    paths = write_report(report, ns.out, plot=not ns.no_plot, against=ns.against)
    logger.info("report written: %s", ", ".join(str(p) for p in paths.values()))
    return 0
