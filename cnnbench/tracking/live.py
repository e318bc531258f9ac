"""MLflow during training (``logger=mlflow``): a worker thread that the run hands its records to.

The run's own files come first: :class:`~cnnbench.runfolder.log.RunLogger` writes metrics.jsonl and
TensorBoard, then passes each record here. Records are queued as plain numbers (the loop has already
read them at its logging points: no extra host sync) and sent in one ``log_batch`` per epoch, or sooner
when a minute has passed. Every MLflow call happens on the worker thread, so a slow or unreachable
tracker never holds up a step; its first failure is one warning, after which the tracker is left alone
and the run goes on: ``cnnbench track RUN_DIR`` uploads the finished run from its folder.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional  # noqa: UP035 - OmegaConf reads Optional[...] annotations

from omegaconf import MISSING, DictConfig

from ..errors import ConfigError
from ..runfolder.log import current_swept_keys
from ..schema import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Section
from .client import PARENT_TAG, Tracker, client_version, failure_reason, quiet_mlflow
from .record import (
    Point,
    experiment_name,
    local_store_path,
    metric_points,
    param_names,
    params_of,
    read_ids,
    resolve_tracking_uri,
    run_label,
    runs_view_url,
    sweep_dir_of,
    ui_command,
)
from .registry import register_tracker

logger = logging.getLogger(__name__)

FLUSH_S = 60.0  # seconds: a long epoch still shows its train points this often


@dataclass
class MlflowLoggerConfig(Section):
    """``logger=mlflow``: MLflow beside TensorBoard (``conf/logger/mlflow.yaml``)."""

    tracking_uri: Optional[str] = MISSING  # noqa: UP045 - null: sqlite:///<cwd>/outputs/mlflow.db
    experiment: Optional[str] = MISSING  # noqa: UP045 - null: "cnnbench"; a sweep: its folder
    log_model: bool = MISSING  # also upload best.pt (last.pt without one) and export/
    timeout_s: float = MISSING  # seconds per HTTP request to a tracking server
    retries: int = MISSING  # HTTP retries per request
    finish_timeout_s: float = MISSING  # seconds the end of a run waits for uploads still queued
    RANGES = {"timeout_s": POSITIVE, "retries": NON_NEGATIVE_INT, "finish_timeout_s": NON_NEGATIVE}

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("logger=mlflow needs MLflow, which is not installed: "
                              "pip install 'cnnbench[mlflow]' (or mlflow-skinny)")
        if self.tracking_uri is not None and not re.match(r"^[a-z][a-z0-9+.-]*:", self.tracking_uri):
            raise ConfigError(f"{prefix}.tracking_uri must be a URI (http://host:5000, sqlite:///path/mlflow.db, "
                              f"databricks), got {self.tracking_uri!r}")
        if self.experiment is not None and not self.experiment.strip():
            raise ConfigError(f"{prefix}.experiment must be a name or null, got {self.experiment!r}")


@register_tracker("mlflow", MlflowLoggerConfig)
class MlflowTracker:
    """One run's MLflow logging, on a worker thread (see the module's docstring)."""

    def __init__(self, logger_cfg: MlflowLoggerConfig, cfg: DictConfig, run_dir: Path, overrides: list[str],
                 resuming: bool) -> None:
        self.uri = resolve_tracking_uri(logger_cfg.tracking_uri)
        self.run_dir = run_dir
        self.with_model = bool(logger_cfg.log_model)
        self.finish_timeout_s = float(logger_cfg.finish_timeout_s)
        self.warning: str | None = None  # the one warning of a failed tracker
        self.run_id: str | None = None
        self._pending: list[Point] = []
        self._last_send = time.monotonic()
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        sweep_dir = sweep_dir_of(run_dir)
        experiment = experiment_name(logger_cfg.experiment, sweep_dir)
        # A sweep's own experiment gets its runs view (swept params as columns); its last lines say how to open it.
        swept = current_swept_keys()
        self._swept = param_names(swept) if sweep_dir is not None and not logger_cfg.experiment else None
        self._name = run_label(cfg, overrides, swept)  # 'lenet_bn, lr=0.3' in a sweep
        if sweep_dir is None:
            logger.info("MLflow: experiment '%s' at %s; to browse: %s", experiment, self.uri, ui_command(self.uri))
        else:  # the UI command once, in the sweep's closing lines, not in every job's header
            logger.info("MLflow: experiment '%s' at %s", experiment, self.uri)
        self._thread = threading.Thread(target=self._work, name="cnnbench-mlflow", daemon=True)
        # MLflow's import and the client (a local store opened, its tables made the first time) are ~2 s of
        # CPU-bound Python, done here, before the run starts: on the worker they would hold the GIL beside
        # the training loop. They touch no server; requests go from the worker.
        try:
            quiet_mlflow(float(logger_cfg.timeout_s), int(logger_cfg.retries))
            self._tracker = Tracker(self.uri)
        except Exception as exc:  # a broken local store, a bad URI: the tracker's problem, never the run's
            self._warn(failure_reason(exc))
        params = params_of(cfg, overrides)  # here: the config is the training thread's to change
        self._submit(lambda: self._open(params, experiment, sweep_dir, resuming))

    # ------------------------------------------------------------------------ the training thread

    def start(self) -> None:
        """Start sending, once the run is built: the worker's requests must not run beside the build's
        autotuning, whose timings they would skew."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()

    def log(self, kind: str, record: dict[str, Any]) -> None:
        """Queue one metrics.jsonl record; send the queue at an epoch's end or after FLUSH_S seconds."""
        if self.warning is not None:
            return
        self._pending += metric_points([record])
        if kind == "epoch" or time.monotonic() - self._last_send > FLUSH_S:
            self._send_pending()

    def finish(self, summary: dict[str, Any]) -> None:
        """The end of the run (after summary.json is written): the rest of the points, final figures,
        tags, artifacts and status; waits up to ``finish_timeout_s`` for the worker, never raises."""
        self.start()  # a run that failed to build is recorded too
        self._send_pending()
        self._submit(lambda: self._tracker.finish_run(self.run_id, self.run_dir, summary, self.with_model))
        self._queue.put(None)
        self._thread.join(self.finish_timeout_s)
        if self._thread.is_alive():
            self._warn(f"MLflow did not finish within {self.finish_timeout_s:g} s (logger.finish_timeout_s)")

    def _send_pending(self) -> None:
        points, self._pending = self._pending, []
        self._last_send = time.monotonic()
        if points:
            self._submit(lambda: self._tracker.log_points(self.run_id, points))

    def _submit(self, call: Callable[[], None]) -> None:
        self._queue.put(call)

    # ------------------------------------------------------------------------ the worker thread

    def _open(self, params: dict[str, str], experiment: str, sweep_dir: Path | None, resuming: bool) -> None:
        tags = {}
        if sweep_dir is not None:
            parent = read_ids(sweep_dir, self.uri)  # the launcher opened it; else open it here
            tags[PARENT_TAG] = parent["run_id"] if parent else self._tracker.open_sweep(sweep_dir, experiment)
        self.run_id, continued = self._tracker.open_run(self.run_dir, experiment, tags, resume=resuming,
                                                        name=self._name)
        ids = read_ids(self.run_dir, self.uri)
        if self._swept is not None and ids is not None:
            self._tracker.describe_sweep(ids["experiment_id"], tags.get(PARENT_TAG), self._swept)
        changed = self._tracker.log_params(self.run_id, params)
        if continued:
            logger.info("MLflow: continuing run %s%s", self.run_id,
                        f" (params kept as first logged: {', '.join(changed)})" if changed else "")

    def _work(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            if self.warning is not None:
                continue  # the tracker failed once: the run's files are the record now
            try:
                call()
            except Exception as exc:  # any failure of the tracker is the tracker's, never the run's
                self._warn(failure_reason(exc))

    def _warn(self, reason: str) -> None:
        if self.warning is not None:
            return
        self.warning = (f"MLflow logging to {self.uri} stopped ({reason}); the run goes on and its folder is "
                        f"complete: upload it later with `cnnbench track {self.run_dir}`")
        logger.warning("%s", self.warning)


# ------------------------------------------------------------------------------------------- sweeps


def start_sweep(logger_cfg: MlflowLoggerConfig | None, sweep_dir: Path) -> str | None:
    """Before a sweep's jobs start (in the launching process): its parent run, so that parallel jobs
    find one. A failure is one warning (the jobs then try themselves); returns the run id or None.
    ``logger_cfg``: the sweep's ``logger.mlflow`` settings, None without ``logger=mlflow``."""
    if logger_cfg is None:
        return None
    uri = resolve_tracking_uri(logger_cfg.tracking_uri)
    try:
        quiet_mlflow(float(logger_cfg.timeout_s), int(logger_cfg.retries))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return Tracker(uri).open_sweep(sweep_dir, experiment_name(logger_cfg.experiment, sweep_dir))
    except Exception as exc:
        logger.warning("MLflow: the sweep's parent run could not be opened at %s (%s); each job tries on its own",
                       uri, failure_reason(exc))
        return None


def end_sweep(logger_cfg: MlflowLoggerConfig | None, sweep_dir: Path, outcomes: list[dict[str, Any]]) -> None:
    """After the jobs: the parent run's counts of jobs and its status (FINISHED when every job completed)."""
    if logger_cfg is None:
        return
    uri = resolve_tracking_uri(logger_cfg.tracking_uri)
    ids = read_ids(sweep_dir, uri)
    if ids is None:
        return
    try:
        tracker = Tracker(uri)
        end_parent(tracker, ids["run_id"], sweep_dir, outcomes)
    except Exception as exc:
        logger.warning("MLflow: the sweep's parent run could not be closed at %s (%s)", uri, failure_reason(exc))


def sweep_browse_lines(logger_cfg: MlflowLoggerConfig | None, sweep_dir: Path) -> list[str]:
    """How to see a sweep's runs in MLflow, for its closing lines: the UI command (with the version that
    reads the store: the UI must be at least the writer's, it refuses a newer database schema) and the
    address of the sweep's runs view. [] without ``logger=mlflow`` (``logger_cfg`` None)."""
    if logger_cfg is None:
        return []
    uri = resolve_tracking_uri(logger_cfg.tracking_uri)
    ids = read_ids(sweep_dir, uri)
    version = client_version()
    lines = [ui_command(uri) + (f"   (pip install 'mlflow>={version}')" if local_store_path(uri) and version else "")]
    if ids is not None:  # a local store is served by `mlflow ui` at its default address; a server at its URI
        lines.append("then open " + (runs_view_url(ids["experiment_id"]) if local_store_path(uri)
                                     else runs_view_url(ids["experiment_id"], uri.rstrip("/"))))
    return lines


def end_parent(tracker: Tracker, run_id: str, sweep_dir: Path, outcomes: list[dict[str, Any]]) -> None:
    """A sweep's parent run at its end: jobs and completed jobs, Hydra's multirun.yaml, its status."""
    from .record import SWEEP_RECORD

    completed = sum(o.get("status") == "completed" for o in outcomes)
    tracker.log_metrics(run_id, {"sweep/jobs": len(outcomes), "sweep/completed": completed}, 0,
                        int(time.time() * 1000))
    if (sweep_dir / SWEEP_RECORD).is_file():
        tracker.client.log_artifact(run_id, str(sweep_dir / SWEEP_RECORD))
    tracker.end(run_id, "FINISHED" if outcomes and completed == len(outcomes) else "FAILED")
