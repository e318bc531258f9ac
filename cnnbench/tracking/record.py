"""What a run records in an experiment tracker, read from what the run folder holds: one code path for
the live logging of a training run and for ``cnnbench track`` afterwards.

Everything here is plain data (no MLflow import): params from the config and overrides (the names of
TensorBoard's HParams tab), metric points from metrics.jsonl records, the summary's final figures, tags,
the files uploaded as artifacts, and the ``mlflow.json`` file that keeps a folder's MLflow ids per store.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import split_override
from ..runfolder.log import HPARAM_ALIASES, hparam_name, hparams_of, swept_keys, trial_name, write_json_atomic
from ..runfolder.names import BEST_CHECKPOINT, CHECKPOINT, CONFIG, HYDRA_DIR, METRICS, SUMMARY, read_summary

TRACKING_IDS = "mlflow.json"  # in a run or sweep folder: {tracking URI: {"experiment_id", "run_id"}}
SWEEP_RECORD = "multirun.yaml"  # Hydra's record of a sweep, in the sweep folder
DEFAULT_EXPERIMENT = "cnnbench"
DEFAULT_STORE = Path("outputs") / "mlflow.db"  # under the current folder, beside Hydra's outputs/DATE/...
ARTIFACTS_DIR = ".mlflow-artifacts"  # beside a local SQLite store: its runs' artifacts (hidden: a walk for
# run folders, cnnbench report outputs/, must not take their copies of summary.json for runs)
CONFUSION_PICTURE = "confusion_test.png"
LOG_FILE = "train.log"  # Hydra's job log (hydra.job.name=train)
EXPORT_DIR = "export"  # cnnbench export's default folder
# MLflow's limits: a param value's length, a tag value's length
MAX_PARAM = 6000
MAX_TAG = 5000
# Metric and param names MLflow accepts: letters, digits, _ - . space / and colons
_NAME_CHARS = re.compile(r"[^\w\-. /:]")
# The runs view a sweep's experiment opens on (MLflow UI's shared view state, an experiment tag the UI reads
# for a link with ``?viewStateShareKey=KEY``): the swept params, then these metrics as columns.
VIEW_KEY = "cnnbench"
VIEW_TAG = "mlflow.sharedViewState."
# The runs view's address: MLflow 3's UI opens in its GenAI mode (no runs table) unless the address says
# workflowType; the shared view is read on the runs page only.
VIEW_QUERY = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
KEY_METRICS = ("test/acc", "train/loss", "examples_per_sec", "time/wall_s")
# MLflow 3 opens an experiment without this tag in its GenAI mode, whose runs view is empty until the user
# picks "Model training"; its value for classic training runs:
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # an experiment's or run's description in the UI (markdown)
UI_PORT = 5000  # `mlflow ui`'s default port
# metrics.jsonl keys that are not metrics: the record's kind, its x axis, its wall-clock time
NOT_METRICS = ("kind", "step", "time", "examples")
# An epoch record's keys that the train record of the same step (the epoch's last logging point) already
# holds: one point per step in the histories
EPOCH_REPEATS = ("train/loss", "train/acc", "epoch", "throughput/examples_per_sec")
# summary.json key -> metric name: the final figures not already in the metric histories
SUMMARY_METRICS = {
    "best/epoch": "best/epoch", "best/val_acc": "best/val_acc", "best/val_loss": "best/val_loss",
    "best/test_acc": "best/test_acc", "best/test_loss": "best/test_loss",
    "epochs_completed": "epochs_completed", "time_to_target_s": "time/to_target_s", "wall_time_s": "time/wall_s",
    "train_time_s": "time/train_s", "examples_per_sec": "examples_per_sec",
    "params": "model/params", "flops_per_image": "model/flops_per_image",
}
# summary.json key -> tag name
SUMMARY_TAGS = {"model": "model", "dataset": "dataset", "status": "status", "resize": "resize", "device": "device",
                "precision": "precision", "world_size": "world_size", "cnnbench_version": "cnnbench_version",
                "torch_version": "torch_version", "source_commit": "mlflow.source.git.commit"}
# summary status -> MLflow run status
RUN_STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}  # else FAILED (a "running" one died)


# ------------------------------------------------------------------------------------------- stores


def resolve_tracking_uri(uri: str | None) -> str:
    """``logger.tracking_uri`` as a store every process agrees on: null is the local SQLite store
    ``outputs/mlflow.db`` of the current folder, and a relative SQLite path becomes absolute."""
    if uri is None:
        return f"sqlite:///{DEFAULT_STORE.resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def local_store_path(uri: str) -> Path | None:
    """The database file of a local SQLite store, else None (a server)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its runs' artifacts: beside a local store's database; a server's own
    setting otherwise (None)."""
    db = local_store_path(uri)
    return (db.parent / ARTIFACTS_DIR).as_uri() if db is not None else None


def ui_command(uri: str) -> str:
    """The command that shows a store's runs in a browser."""
    return f"mlflow ui --backend-store-uri {uri}" if local_store_path(uri) else uri


def read_ids(folder: Path, uri: str) -> dict[str, str] | None:
    """The MLflow ids a run or sweep folder has in the store ``uri`` (None: not recorded there)."""
    try:
        ids = json.loads((folder / TRACKING_IDS).read_text()).get(uri)
    except (OSError, ValueError, AttributeError):
        return None
    return ids if isinstance(ids, dict) and ids.get("run_id") else None


def write_ids(folder: Path, uri: str, experiment_id: str, run_id: str) -> None:
    """Keep the folder's ids in the store ``uri`` (those in other stores stay): a resumed run, a resumed
    sweep and ``cnnbench track`` continue the same MLflow run."""
    path = folder / TRACKING_IDS
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    known[uri] = {"experiment_id": experiment_id, "run_id": run_id}
    write_json_atomic(path, known)


# ------------------------------------------------------------------------------------------- naming


def sweep_dir_of(run_dir: Path) -> Path | None:
    """The sweep folder a run folder belongs to, or None: the folder above a job of a multirun (its
    ``.hydra/hydra.yaml`` says ``mode: MULTIRUN``; searching sweepers such as Optuna's write no
    multirun.yaml), or one that holds Hydra's multirun.yaml."""
    import yaml

    parent = Path(run_dir).parent
    if (parent / SWEEP_RECORD).is_file():
        return parent
    try:
        mode = yaml.safe_load((Path(run_dir) / HYDRA_DIR / "hydra.yaml").read_text())["hydra"]["mode"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return parent if str(mode) == "MULTIRUN" else None


def folder_label(folder: Path) -> str:
    """A folder as a name: relative to the current folder when under it, else absolute."""
    full = Path(folder).resolve()
    try:
        return str(full.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(full)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}$")


def experiment_name(configured: str | None, sweep_dir: Path | None) -> str:
    """``logger.experiment``; when null, a sweep's own experiment named by its folder, or "cnnbench".

    A sweep's name starts with what tells sweeps apart, its date and time (the UI's list cuts long names),
    and has no "/" (the UI shows a name's part after its last "/" only):
    ``outputs/multirun/2026-12-07/09-20-21-996625`` -> ``2026-12-07 09-20-21-996625 (outputs · multirun)``;
    another folder: ``my_sweep (data · sweeps)``."""
    if configured:
        return configured
    if sweep_dir is None:
        return DEFAULT_EXPERIMENT
    folder = Path(folder_label(sweep_dir))
    head, rest = folder.name, folder.parent
    if _DATE.match(rest.name):  # Hydra's outputs/multirun/DATE/TIME
        head, rest = f"{rest.name} {head}", rest.parent
    where = " · ".join(part for part in rest.parts if part not in ("/", "."))
    return f"{head} ({where})" if where else head


def run_label(cfg: DictConfig | None, overrides: list[str], swept: list[str]) -> str | None:
    """A sweep job's MLflow run name, its swept values ('lenet_bn, lr=0.3', as TensorBoard's HParams
    trial); None outside a sweep (the run is named by its folder)."""
    if cfg is None or not swept:
        return None
    try:
        hparams = hparams_of(cfg, overrides, swept)
    except Exception:  # a config of an older cnnbench without one of the keys: named by its folder
        return None
    return trial_name(hparams, [hparam_name(k) for k in swept]) or None


def folder_swept_keys(run_dir: Path) -> list[str]:
    """The override keys a sweep job varies (``model``, ``optimizer.lr``), read from its
    ``.hydra/hydra.yaml``; [] for a single run or a folder without the record."""
    try:
        hydra = OmegaConf.load(Path(run_dir) / HYDRA_DIR / "hydra.yaml").get("hydra")
    except Exception:  # no record, or an unreadable one
        return []
    return swept_keys(hydra)


def param_names(keys: Iterable[str]) -> list[str]:
    """The MLflow param names of override keys (the HParams names: ``optimizer.lr`` -> ``lr``)."""
    return [clean_name(hparam_name(k)) for k in keys]


def sweep_view(swept: list[str], parent_run_id: str | None) -> dict[str, Any]:
    """The runs view of a sweep as MLflow's UI keeps a shared view: the swept params and the key metrics as
    columns, the parent run expanded, the best test accuracy first."""
    columns = [f"params.`{p}`" for p in swept] + [f"metrics.`{m}`" for m in KEY_METRICS]
    return {"selectedColumns": columns,
            "runsExpanded": {parent_run_id: True} if parent_run_id else {},
            "orderByKey": "metrics.`test/acc`", "orderByAsc": False}


def sweep_note(name: str, swept: list[str]) -> str:
    """The sweep experiment's description (markdown): what varies and how to see it."""
    varied = ", ".join(f"`{p}`" for p in swept) or "nothing"
    return (f"cnnbench sweep `{name}`: varies {varied}. Each job is a child run of the sweep's parent run. "
            f"The runs table with the swept params and {', '.join(f'`{m}`' for m in KEY_METRICS)} as columns: "
            f"open this experiment's address + `/runs?{VIEW_QUERY}` (the sweep's last lines print it).")


def runs_view_url(experiment_id: str, base: str = f"http://127.0.0.1:{UI_PORT}") -> str:
    """The address of a sweep's runs view in the MLflow UI at ``base`` (see :func:`sweep_view`)."""
    return f"{base}/#/experiments/{experiment_id}/runs?{VIEW_QUERY}"


# ------------------------------------------------------------------------------------------- content


def clean_name(name: str) -> str:
    """A metric or param name MLflow accepts (other characters become ``_``)."""
    return _NAME_CHARS.sub("_", name)


def class_metric(class_name: str) -> str:
    """A class's test accuracy key: ``test/class_acc/T-shirt_top``. MLflow's UI makes a chart section of a
    key's part before its last "/", so a "/" in a class name ("T-shirt/top") would open a section of its
    own: every class stays in the one section ``test/class_acc``."""
    return "test/class_acc/" + clean_name(class_name).replace("/", "_")


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "None" if value is None else str(value)


def flat_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (dict or DictConfig) as ``{"optimizer.lr": 0.1, ...}``; lists stay values."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def params_of(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    """The run's params: TensorBoard's HParams (``model``, ``lr``, ``batch_size`` ... and every other
    override) and the rest of the resolved config under its dotted keys (one name per setting)."""
    try:
        params = {k: _text(v) for k, v in hparams_of(cfg, overrides).items()}
    except Exception:  # a config of an older cnnbench without one of the keys: its dotted keys still go
        params = {}
    for key, value in flat_config(cfg).items():
        if key not in params and HPARAM_ALIASES.get(key) not in params:
            params[key] = _text(value)
    return {clean_name(k): v[:MAX_PARAM] for k, v in params.items()}


@dataclass(frozen=True)
class Point:
    """One metric value at a step; ``timestamp`` in milliseconds since the epoch."""

    key: str
    value: float
    timestamp: int
    step: int


def metric_points(records: Iterable[dict[str, Any]], default_time: float = 0.0) -> list[Point]:
    """The metric points of metrics.jsonl records: every number at the record's step, stamped with the
    record's ``time`` (records written before it was kept: ``default_time``, seconds)."""
    points = []
    for record in records:
        if "step" not in record:
            continue
        step = int(record["step"])
        stamp = int(round(float(record.get("time") or default_time) * 1000))
        repeats = EPOCH_REPEATS if record.get("kind") == "epoch" else ()
        for key, value in record.items():
            if key in NOT_METRICS or key in repeats or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                points.append(Point(clean_name(key), float(value), stamp, step))
    return points


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's final figures that the histories do not hold, and the per-class test accuracy."""
    out = {name: float(summary[key]) for key, name in SUMMARY_METRICS.items()
           if isinstance(summary.get(key), (int, float)) and not isinstance(summary.get(key), bool)}
    for name, acc in (summary.get("test/per_class_acc") or {}).items():
        if isinstance(acc, (int, float)):
            out[class_metric(name)] = float(acc)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def recipe_of(overrides: Iterable[str]) -> str | None:
    """The ``experiment=`` preset a run was started with (d2l_lenet, fast_cpu ...), if any."""
    for item in overrides:
        key, value = split_override(str(item))
        if key == "experiment" and value:
            return value
    return None


def tags_of(summary: dict[str, Any]) -> dict[str, str]:
    """Tags to search runs by: model, dataset, recipe, status, source commit, versions; the error if any."""
    tags = {name: _text(summary[key]) for key, name in SUMMARY_TAGS.items() if summary.get(key) is not None}
    tags["recipe"] = recipe_of(summary.get("overrides") or []) or "none"
    tags["resumes"] = str(len(summary.get("resumes") or []))
    if summary.get("source_dirty") is not None:
        tags["source_dirty"] = _text(summary["source_dirty"])
    if summary.get("error"):
        tags["error"] = str(summary["error"])[:MAX_TAG]
    return tags


def summary_time_ms(run_dir: Path) -> int:
    """When the run ended: summary.json's last write (now when it has none), in milliseconds. The final
    figures are stamped with it, live or uploaded later, so that the two give the same points."""
    try:
        return int((Path(run_dir) / SUMMARY).stat().st_mtime * 1000)
    except OSError:
        import time

        return int(time.time() * 1000)


def run_status(summary: dict[str, Any]) -> str:
    """MLflow's status for the summary's: completed FINISHED, interrupted KILLED, failed/diverged FAILED."""
    return RUN_STATUS.get(str(summary.get("status")), "FAILED")


def artifacts_of(run_dir: Path, with_model: bool) -> list[tuple[Path, str | None]]:
    """(local file or folder, artifact folder) to upload: summary.json, metrics.jsonl, the log, ``.hydra``;
    ``with_model``: best.pt (last.pt without one) and ``export/``. The confusion picture is drawn apart
    (:func:`confusion_picture`)."""
    items: list[tuple[Path, str | None]] = [(run_dir / name, None) for name in (SUMMARY, METRICS, LOG_FILE)]
    items.append((run_dir / HYDRA_DIR, HYDRA_DIR))
    if with_model:
        best = run_dir / BEST_CHECKPOINT
        items.append((best if best.is_file() else run_dir / CHECKPOINT, "model"))
        items.append((run_dir / EXPORT_DIR, f"model/{EXPORT_DIR}"))
    return [(path, where) for path, where in items if path.exists()]


def confusion_picture(summary: dict[str, Any], folder: Path) -> Path | None:
    """The last test evaluation's confusion matrix (summary.json ``test/confusion``) drawn as a PNG in
    ``folder``; None when the run has none."""
    matrix = summary.get("test/confusion")
    if not matrix:
        return None
    from ..figures import confusion_image

    names = list(summary.get("test/per_class_acc") or {}) or [str(i) for i in range(len(matrix))]
    path = folder / CONFUSION_PICTURE
    confusion_image(matrix, names, title="test set").save(path)
    return path


# ------------------------------------------------------------------------------------------- a folder


@dataclass
class FolderRun:
    """A finished run as its folder holds it: what ``cnnbench track`` uploads."""

    run_dir: Path
    config: DictConfig | None  # .hydra/config.yaml (None when missing)
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    default_time: float  # seconds: the stamp of records without their own time (metrics.jsonl's mtime)


def read_folder(run_dir: Path) -> FolderRun:
    """Read a run folder's config, summary and metric records (never raises on a missing file)."""
    from ..report.runs import read_metrics
    from ..run.recorded import compose_recorded

    config = OmegaConf.load(run_dir / CONFIG) if (run_dir / CONFIG).is_file() else None
    if isinstance(config, DictConfig):  # an older cnnbench's record: today's shape, its facts kept
        config = compose_recorded(config, run_dir)
    summary, _ = read_summary(run_dir)
    metrics = run_dir / METRICS
    return FolderRun(run_dir, config if isinstance(config, DictConfig) else None, summary, read_metrics(metrics),
                     metrics.stat().st_mtime if metrics.is_file() else 0.0)
