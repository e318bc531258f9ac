"""MLflow calls, in one place: the store's client, experiments, runs continued from a folder's ids, and
batched writes. Used by the live logging (:mod:`.live`) and by ``cnnbench track`` (:mod:`.upload`).

MLflow is imported here only, on first use: ``logger=tensorboard`` never loads it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .record import (
    KIND,
    KIND_TAG,
    NOTE_TAG,
    VIEW_KEY,
    VIEW_TAG,
    Point,
    artifact_root,
    artifacts_of,
    confusion_picture,
    final_metrics,
    folder_label,
    read_ids,
    run_status,
    summary_time_ms,
    sweep_note,
    sweep_view,
    tags_of,
    write_ids,
)

logger = logging.getLogger(__name__)

# Loggers whose INFO lines ("Creating initial MLflow database tables...", alembic's "Running upgrade ...",
# "View run ... at ...") are not the run's business: warnings only.
CHATTY_LOGGERS = ("mlflow", "alembic", "alembic.runtime.migration")
RETRY_LOGGER = "urllib3.connectionpool"  # "Retrying (Retry(total=0 ...)) after connection broken ...": errors only
PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "cnnbench.sweep"


def quiet_mlflow(timeout_s: float, retries: int) -> None:
    """Short HTTP timeouts and few retries (MLflow's defaults, 120 s and 7 retries with backoff, keep a
    run waiting for minutes on a server that does not answer), and MLflow's INFO lines off."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(retries))
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"  # seconds, doubling per retry
    import mlflow  # noqa: F401 - configures its own logger on import; set the level after it

    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(RETRY_LOGGER).setLevel(logging.ERROR)


def client_version() -> str | None:
    """The version of the MLflow client that writes the store (mlflow-skinny, or the full mlflow); a local
    store is read only by an ``mlflow ui`` at least as new (an older one refuses its database schema)."""
    from importlib.metadata import PackageNotFoundError, version

    for package in ("mlflow", "mlflow-skinny"):
        try:
            return version(package)
        except PackageNotFoundError:
            continue
    return None


def failure_reason(exc: BaseException, limit: int = 200) -> str:
    """A tracker's failure in a few words: MLflow's message for a refused connection repeats the URL
    three times and ends in urllib3's object reprs; its cause is enough."""
    text = " ".join(str(exc).split())
    for pattern, words in ((r"Failed to establish a new connection: \[Errno -?\d+\] ([\w .-]+)", "cannot connect: {}"),
                           (r"(Read timed out|Connect timeout|timed out)", "no answer: {}"),
                           (r"Name or service not known|nodename nor servname", "unknown host")):
        found = re.search(pattern, text)
        if found:
            return words.format(*found.groups()) if found.groups() else words
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Tracker:
    """One MLflow store (``uri``): experiments by name, runs by folder, batched writes."""

    def __init__(self, uri: str) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    # ------------------------------------------------------------------------ experiments and runs

    def experiment_id(self, name: str) -> str:
        """The experiment called ``name``, created when missing (restored when deleted)."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return self.client.create_experiment(name, artifact_location=artifact_root(self.uri),
                                                 tags={KIND_TAG: KIND})
        if found.lifecycle_stage != "active":
            self.client.restore_experiment(found.experiment_id)
        if found.tags.get(KIND_TAG) is None:  # made by an older cnnbench: the UI would open it in GenAI mode
            self.client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
        return found.experiment_id

    def describe_sweep(self, experiment_id: str, parent_run_id: str | None, swept: list[str]) -> None:
        """A sweep's experiment as a person opens it: its description, and the runs view with the swept
        params and key metrics as columns (:func:`~.record.sweep_view`), kept where MLflow's UI reads a
        shared view. Every job sets the same values (a job may be the first to open the experiment)."""
        name = self.client.get_experiment(experiment_id).name
        self.client.set_experiment_tag(experiment_id, NOTE_TAG, sweep_note(name, swept))
        self.client.set_experiment_tag(experiment_id, VIEW_TAG + VIEW_KEY,
                                       json.dumps(sweep_view(swept, parent_run_id)))

    def open_run(self, folder: Path, experiment: str, tags: dict[str, str] | None = None,
                 resume: bool = True, start_ms: int | None = None, name: str | None = None) -> tuple[str, bool]:
        """The MLflow run of a run or sweep folder: the one its ``mlflow.json`` names in this store, set
        running again, or (and always when not ``resume``: a fresh start in a used folder) a new one named
        ``name`` (default: by the folder), started at ``start_ms`` (default: now). Returns (run id, continued)."""
        ids = read_ids(folder, self.uri) if resume else None
        if ids is not None and self._active(ids["run_id"]):
            self.client.update_run(ids["run_id"], status="RUNNING")
            if tags:
                self.set_tags(ids["run_id"], tags)
            return ids["run_id"], True
        parent = (tags or {}).get(PARENT_TAG)  # a sweep's job goes where its parent run is
        experiment_id = self.client.get_run(parent).info.experiment_id if parent else self.experiment_id(experiment)
        run = self.client.create_run(experiment_id, start_time=start_ms, run_name=name or Path(folder).name, tags={
            "cnnbench.folder": folder_label(folder), "mlflow.source.name": "cnnbench", **(tags or {})})
        write_ids(folder, self.uri, experiment_id, run.info.run_id)
        return run.info.run_id, False

    def _active(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:  # not in this store (a copied folder, a cleared database)
            return False

    def open_sweep(self, sweep_dir: Path, experiment: str) -> str:
        """The parent run of a sweep folder (its jobs' runs name it as their parent)."""
        run_id, _ = self.open_run(sweep_dir, experiment, tags={SWEEP_TAG: "true"})
        return run_id

    def end(self, run_id: str, status: str, end_ms: int | None = None) -> None:
        self.client.set_terminated(run_id, status=status, end_time=end_ms)

    # ------------------------------------------------------------------------ writes

    def log_params(self, run_id: str, params: dict[str, str]) -> list[str]:
        """Log the params the run does not have yet. A param is written once in MLflow: a value changed
        since (a resumed run with more epochs) stays as first logged; its key is returned, and the new
        value is in summary.json's ``resumes``."""
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        if new:
            self.client.log_batch(run_id, params=new)
        return sorted(k for k, v in params.items() if k in existing and existing[k] != v)

    def log_points(self, run_id: str, points: Sequence[Point]) -> None:
        """Metric points in batches (MLflow splits them into its 1000-per-request chunks)."""
        from mlflow.entities import Metric

        if points:
            self.client.log_batch(run_id, metrics=[Metric(p.key, p.value, p.timestamp, p.step) for p in points])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int) -> None:
        self.log_points(run_id, [Point(k, v, timestamp_ms, step) for k, v in metrics.items()])

    # ------------------------------------------------------------------------ the end of a run

    def finish_run(self, run_id: str, run_dir: Path, summary: dict[str, Any], with_model: bool) -> int:
        """What a run records once it has ended, from its folder and summary: final figures, tags,
        artifacts (summary.json, metrics.jsonl, the log, ``.hydra``, the confusion picture, optionally the
        model), then its status, at the time summary.json was written. Returns the number of artifacts."""
        timestamp_ms = summary_time_ms(run_dir)
        self.log_metrics(run_id, final_metrics(summary), int(summary.get("steps") or 0), timestamp_ms)
        self.set_tags(run_id, tags_of(summary))
        uploaded = 0
        for path, where in artifacts_of(run_dir, with_model):
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=where)
            else:
                self.client.log_artifact(run_id, str(path), artifact_path=where)
            uploaded += 1
        with tempfile.TemporaryDirectory(prefix="cnnbench-mlflow-") as tmp:
            picture = confusion_picture(summary, Path(tmp))
            if picture is not None:
                self.client.log_artifact(run_id, str(picture))
                uploaded += 1
        self.end(run_id, run_status(summary), timestamp_ms)
        return uploaded
