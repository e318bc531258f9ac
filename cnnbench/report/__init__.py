"""``cnnbench report DIR``: one table, one CSV and one figure for every run folder under ``DIR``.

A *run folder* is any folder holding ``summary.json`` or ``.hydra/config.yaml``; a Hydra sweep folder,
a single run folder or any tree of them works. The package, one concern per module:

- :mod:`.runs`: reading run folders (``read_run``, ``read_metrics``, ``run_settings`` (the columns come
  from each run's resolved config, not from its command line), ``parse_overrides``, ``accuracy_curve``),
  the ``RunResult``/``SeedGroup``/``Report`` data and ``build_report``, which reads, sorts and groups them;
- :mod:`.tables`: table cells, markdown tables, the printed text, report.md and report.csv, and
  ``write_report``, which writes the files;
- :mod:`.plots`: report.png, the only module that uses matplotlib (imported lazily);
- :mod:`.command`: ``cmd_report``, the argparse command line.

The package never imports torch: reading a few JSON files must stay fast on any machine.
"""

from .command import cmd_report
from .plots import plot_report
from .runs import (
    Report,
    RunResult,
    SeedGroup,
    accuracy_curve,
    build_report,
    differing_keys,
    parse_overrides,
    read_metrics,
    read_run,
    run_settings,
    seed_groups,
    sort_runs,
)
from .tables import csv_rows, markdown_table, report_markdown, report_text, write_csv, write_report

__all__ = [
    "Report", "RunResult", "SeedGroup", "accuracy_curve", "build_report", "cmd_report", "csv_rows",
    "differing_keys", "markdown_table", "parse_overrides", "plot_report", "read_metrics",
    "read_run", "report_markdown", "report_text", "run_settings", "seed_groups", "sort_runs", "write_csv",
    "write_report",
]
