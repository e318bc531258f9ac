"""``cnnbench track RUN_OR_SWEEP_DIR ...``: upload finished runs to MLflow from their folders.

The same records as a live ``logger=mlflow`` run (:mod:`.record`): params from ``.hydra/config.yaml``,
every metrics.jsonl point at its step and time, the summary's figures, tags and artifacts. A folder
that was already logged to the store (its ``mlflow.json``) continues its own run and adds what is
missing, so it is safe to run again: after a tracker outage, or to move runs trained offline into a
server (``--tracking-uri``). A sweep folder's jobs go under the sweep's parent run.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..runfolder.lock import holder_of
from ..runfolder.names import CONFIG, SUMMARY, find_run_folders, read_summary
from .client import PARENT_TAG, Tracker, failure_reason, quiet_mlflow
from .live import end_parent
from .record import (
    FolderRun,
    experiment_name,
    folder_swept_keys,
    metric_points,
    param_names,
    params_of,
    read_folder,
    read_ids,
    resolve_tracking_uri,
    run_label,
    summary_time_ms,
    sweep_dir_of,
    ui_command,
)
from .registry import logger_sections

logger = logging.getLogger(__name__)


def cmd_track(args: Sequence[str]) -> int:
    """The ``cnnbench track`` command; exit 0 when every run was uploaded, 1 when one failed."""
    parser = argparse.ArgumentParser(
        prog="cnnbench track",
        description="Upload finished runs (a run folder, a sweep folder, or a folder of them) to MLflow: params, "
                    "metric histories, final figures, tags and artifacts, as logger=mlflow records them live. "
                    "Safe to repeat: a run already in the store is continued, not duplicated.")
    parser.add_argument("folders", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR")
    parser.add_argument("--tracking-uri", default=None,
                        help="the store: http://host:5000, sqlite:///path/mlflow.db (default: each run's "
                             "logger.tracking_uri, else sqlite:///outputs/mlflow.db of this folder)")
    parser.add_argument("--experiment", default=None,
                        help="experiment name (default: the run's logger.experiment; else a sweep's folder, or "
                             "'cnnbench')")
    parser.add_argument("--model", action="store_true", help="also upload best.pt (or last.pt) and export/")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request to a server (default 10)")
    ns = parser.parse_args(args)
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("cnnbench track needs MLflow, which is not installed: pip install 'cnnbench[mlflow]'")
    runs = []
    for folder in ns.folders:
        found = find_run_folders(folder) if folder.is_dir() else []
        if not found:
            raise ConfigError(f"{folder}: no run folder there (a run folder holds {CONFIG} or {SUMMARY})")
        runs += found
    quiet_mlflow(ns.timeout, retries=1)
    trackers: dict[str, Tracker] = {}
    sweeps: dict[tuple[str, Path], tuple[str, str]] = {}  # (store, sweep folder) -> (parent run id, experiment)
    uploaded = 0
    for run_dir in runs:
        holder = holder_of(run_dir)
        if holder is not None:
            print(f"skipped {run_dir}: still being written by {holder}")
            continue
        run = read_folder(run_dir)
        uri = resolve_tracking_uri(ns.tracking_uri or _configured(run, "tracking_uri"))
        try:
            tracker = trackers.get(uri) or trackers.setdefault(uri, Tracker(uri))
            print(upload_run(tracker, run, ns.experiment or _configured(run, "experiment"), ns.model, sweeps))
            uploaded += 1
        except Exception as exc:  # the store's failure: say which run, stop (the next would fail the same way)
            print(f"failed {run_dir}: {failure_reason(exc)}")
            print(f"{uploaded} of {len(runs)} runs uploaded to {uri}")
            return 1
    for (uri, sweep_dir), (parent, _) in sweeps.items():
        end_parent(trackers[uri], parent, sweep_dir, [read_summary(r)[0] for r in find_run_folders(sweep_dir)])
    print(f"{uploaded} of {len(runs)} runs uploaded; to browse: "
          + "; ".join(ui_command(uri) for uri in trackers))
    return 0 if uploaded == len(runs) else 1


def _configured(run: FolderRun, key: str) -> Any:
    """A ``logger.mlflow.KEY`` of the run's own config, when it logged to MLflow (an older cnnbench's flat
    ``logger.KEY`` reads the same)."""
    node = logger_sections(run.config.get("logger")).get("mlflow") if run.config is not None else None
    return node.get(key) if node is not None else None


def upload_run(tracker: Tracker, run: FolderRun, experiment: str | None, with_model: bool,
               sweeps: dict[tuple[str, Path], tuple[str, str]]) -> str:
    """Upload one run folder; returns the line that says what was done."""
    sweep_dir = sweep_dir_of(run.run_dir)
    name = experiment_name(experiment, sweep_dir)
    tags = {}
    if sweep_dir is not None:
        key = (tracker.uri, sweep_dir.resolve())
        if key not in sweeps:
            sweeps[key] = (tracker.open_sweep(sweep_dir, name), name)
        tags[PARENT_TAG] = sweeps[key][0]
    end_ms = summary_time_ms(run.run_dir)
    wall_s = run.summary.get("wall_time_s")
    start_ms = end_ms - int(wall_s * 1000) if isinstance(wall_s, (int, float)) else None  # when it trained
    overrides = [str(o) for o in run.summary.get("overrides") or []]
    swept = folder_swept_keys(run.run_dir)
    run_id, continued = tracker.open_run(run.run_dir, name, tags, start_ms=start_ms,
                                         name=run_label(run.config, overrides, swept))
    ids = read_ids(run.run_dir, tracker.uri)
    if sweep_dir is not None and not experiment and ids is not None:  # the sweep's own experiment: its view
        tracker.describe_sweep(ids["experiment_id"], tags[PARENT_TAG], param_names(swept))
    params = params_of(run.config, overrides) if run.config is not None else {}
    tracker.log_params(run_id, params)
    points = metric_points(run.records, run.default_time)
    tracker.log_points(run_id, points)
    artifacts = tracker.finish_run(run_id, run.run_dir, run.summary, with_model)
    return (f"{'continued' if continued else 'uploaded'} {run.run_dir} -> run {run_id} in experiment '{name}' "
            f"({run.summary.get('status', 'no summary')}: {len(params)} params, {len(points)} metric points, "
            f"{artifacts} artifacts)")
