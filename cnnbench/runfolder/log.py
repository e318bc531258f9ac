"""The run's records as it goes: metrics.jsonl and TensorBoard events (``RunLogger``), cutting
metrics.jsonl back to a checkpoint on resume (``trim_metrics``), and atomic JSON files."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import split_override
from ..models import input_side
from .disk import atomic_write, writing
from .names import METRICS

logger = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    """NaN and infinities become None: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    with atomic_write(path) as f:  # a full disk: one RunFileWriteError naming the file; the old one stays
        json.dump({k: _jsonable(v) for k, v in data.items()}, f, indent=2, sort_keys=False)
        f.write("\n")


# metrics.jsonl key -> TensorBoard tag, for the keys whose tag differs. TensorBoard's Time Series page
# sorts its card groups (a tag's part before the first "/") by name and opens only the first two: these
# go under "trainer", which sorts after "test" and "train", so the page opens on the loss and accuracy
# curves rather than on the learning rate.
TB_TAGS = {"lr": "trainer/lr", "throughput/examples_per_sec": "trainer/examples_per_sec",
           "time/epoch_s": "trainer/epoch_s"}
# The HParams tab's metric columns: existing scalar tags, whose last value it shows (no copies).
HPARAM_METRICS = ("test/acc", "test/loss", "train/acc", "train/loss")
# The custom-scalars dashboard: the book's chart (train loss, train acc, test acc), one chart per curve so
# that a sweep's runs stay legible (one chart of every curve of every run is 3 series per run, its legend
# folded); each chart has one line per run.
BOOK_LAYOUT = {"the book's chart (d2l: train loss, train acc, test acc)": {
    "train loss": ["Multiline", ["^train/loss$"]],
    "train accuracy": ["Multiline", ["^train/acc$"]],
    "test accuracy": ["Multiline", ["^test/acc$"]]}}
TB_CONFUSION = "vis/confusion_test"  # the last evaluation's confusion matrix (a group after "train")
# An override key -> the HParams name that already holds its (resolved) value: one name per setting.
HPARAM_ALIASES = {"dataset.resize": "resize", "optimizer.lr": "lr", "trainer.batch_size": "batch_size",
                  "trainer.epochs": "epochs", "trainer.seed": "seed", "device.precision": "precision",
                  "model.name": "model", "dataset.name": "dataset", "optimizer.name": "optimizer"}


def tb_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key."""
    return TB_TAGS.get(key, key)


def hparam_name(key: str) -> str:
    """The HParams name of an override key (``optimizer.lr`` -> ``lr``)."""
    return HPARAM_ALIASES.get(key, key)


def swept_keys(hydra_cfg: Any) -> list[str]:
    """The override keys a sweep varies, from a job's Hydra config (``hydra`` node; None: not Hydra): in a
    multirun, the job's overrides that are not among the keys every job shares, which the sweep's job
    naming (``commands/sweeps.py``) puts in ``override_dirname.exclude_keys``. A single run varies nothing."""
    try:
        if hydra_cfg is None or str(hydra_cfg.mode).rsplit(".", 1)[-1] != "MULTIRUN":  # RunMode.MULTIRUN live
            return []
        shared = set(hydra_cfg.job.config.override_dirname.exclude_keys or [])
        task = list(hydra_cfg.overrides.task or [])
    except Exception:  # a record of another shape (an older cnnbench, a hand-made folder): nothing known
        return []
    keys = [split_override(str(item))[0] for item in task]
    return [k for k in dict.fromkeys(keys) if k not in shared and not k.startswith("hydra")]


def current_swept_keys() -> list[str]:
    """:func:`swept_keys` of the running Hydra job (none outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return swept_keys(HydraConfig.get()) if HydraConfig.initialized() else []


def hparams_of(cfg: DictConfig, overrides: list[str], swept: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings shown in TensorBoard's HParams tab: the main knobs plus every other override; the
    ``swept`` override keys' names come first (TensorBoard keeps the order among equals)."""
    hp: dict[str, Any] = {
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "resize": input_side(cfg.model.name, cfg.dataset.resize),
        "optimizer": cfg.optimizer.name,
        "lr": float(cfg.optimizer.lr),
        "batch_size": int(cfg.trainer.batch_size),
        "epochs": int(cfg.trainer.epochs),
        "seed": int(cfg.trainer.seed),
        "precision": cfg.device.precision,
    }
    for item in overrides:
        key, value = split_override(item)
        if key.startswith("hydra") or HPARAM_ALIASES.get(key, key) in hp:
            continue
        hp[key] = value
    first = [hparam_name(k) for k in swept if hparam_name(k) in hp]
    return {**{name: hp[name] for name in first}, **hp}


def trial_name(hparams: dict[str, Any], varied: list[str] | tuple[str, ...]) -> str:
    """A sweep job's name in the HParams table, from the values it varies: 'lenet_bn, lr=0.3' (the model
    by its name alone, like ``cnnbench report``); "" outside a sweep (TensorBoard then shows the run's
    folder). The folder name ('3_model=lenet_bn,optimizer.lr=0.3') is cut after ~15 characters there."""
    parts = [str(hparams[n]) if n == "model" else f"{n}={hparams[n]}" for n in varied if n in hparams]
    return ", ".join(parts)


class RunLogger:
    """Appends metric records to ``metrics.jsonl`` and mirrors them to TensorBoard, then hands each to
    ``tracker`` (an experiment tracker: :mod:`cnnbench.tracking.live`), the run's files first.

    Only scalar values are written to TensorBoard; ``kind`` tells train-interval records from epoch ones.
    Each record gets its wall-clock ``time`` (seconds since the epoch): a tracker's points carry it, the
    same whether sent live or uploaded later from metrics.jsonl.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, purge_step: int | None = None,
                 tracker: Any = None) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.tracker = tracker  # has .log(kind, record); None: the run folder only
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (run_dir / METRICS).open("a", buffering=1)  # line-buffered
        # purge_step drops events at or after it that a killed run wrote past its last checkpoint.
        with writing(run_dir / "events.out.tfevents.*"):
            self._tb = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def _events_file(self, tb: Any = None) -> Path:
        """The TensorBoard event file this logger writes (named in write errors)."""
        writer = getattr(getattr(tb or self._tb, "file_writer", None), "event_writer", None)
        return Path(getattr(writer, "_file_name", self.run_dir / "events.out.tfevents.*"))

    def log(self, kind: str, record: dict) -> None:
        """Write one record (``step`` is TensorBoard's x axis); a failed write raises RunFileWriteError."""
        if not self.enabled:
            return
        record = {**record, "time": round(time.time(), 3)}
        with writing(self.run_dir / METRICS):
            self._jsonl.write(json.dumps({"kind": kind, **{k: _jsonable(v) for k, v in record.items()}}) + "\n")
        step = int(record["step"])
        with writing(self._events_file()):
            for key, value in record.items():
                if (key in ("step", "epoch", "examples", "time") or not isinstance(value, (int, float))
                        or isinstance(value, bool)):
                    continue
                self._tb.add_scalar(tb_tag(key), value, step)
            if kind == "epoch":
                # TensorBoard writes from a thread; flushing once an epoch brings a failed write to light
                # here, before the epoch's checkpoint, rather than at the end of the run.
                self._tb.flush()
        if self.tracker is not None:
            self.tracker.log(kind, {"kind": kind, **record})

    def log_config(self, cfg: DictConfig) -> None:
        """Once, at a fresh run's start: the config as text and the custom-scalars layout."""
        if self.enabled:
            self._tb.add_text("config", "```yaml\n" + OmegaConf.to_yaml(cfg) + "\n```", 0)
            self._tb.add_custom_scalars(BOOK_LAYOUT)

    def log_hparams(self, hparams: dict[str, Any], swept: list[str] | tuple[str, ...] = ()) -> None:
        """HParams entry for this run, inside the run's own folder so a sweep's runs line up; its metric
        columns are the run's own :data:`HPARAM_METRICS` tags. The ``swept`` override keys are marked as
        differing: TensorBoard lists those first and ticks the first five, so the table opens on what the
        sweep varies; the job's trial name is made of their values."""
        if not self.enabled:
            return
        from tensorboard.plugins.hparams import plugin_data_pb2
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        varied = [hparam_name(k) for k in swept if hparam_name(k) in hparams]
        # hparams() reads only the metric names (the tags); the tab takes each one's last logged value.
        exp, ssi, sei = hparams_summary(hparams, dict.fromkeys(HPARAM_METRICS, 0.0))
        # TensorBoard sorts the experiment's hparams by (not differs, name); torch's summary marks none.
        data = plugin_data_pb2.HParamsPluginData.FromString(exp.value[0].metadata.plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in varied
        exp.value[0].metadata.plugin_data.content = data.SerializeToString()
        start = plugin_data_pb2.HParamsPluginData.FromString(ssi.value[0].metadata.plugin_data.content)
        start.session_start_info.group_name = trial_name(hparams, varied)
        ssi.value[0].metadata.plugin_data.content = start.SerializeToString()
        writer = self._tb._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)

    def log_confusion(self, tag: str, matrix: Any, names: list[str], step: int) -> None:
        """The confusion matrix as an image (see :func:`cnnbench.figures.confusion_image`)."""
        if not self.enabled:
            return
        import numpy as np

        from ..figures import confusion_image

        picture = np.asarray(confusion_image(matrix, names, title="test set"))  # (H, W, 3) uint8
        with writing(self._events_file()):
            self._tb.add_image(tag, picture, step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close both files (both closed even when a write fails; the failure is raised)."""
        tb, jsonl, self._tb, self._jsonl = self._tb, self._jsonl, None, None
        try:
            if tb is not None:
                with writing(self._events_file(tb)):
                    try:
                        tb.flush()
                    finally:
                        tb.close()
        finally:
            if jsonl is not None:
                with writing(self.run_dir / METRICS):
                    jsonl.close()


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics.jsonl records past ``step``: a killed run may have logged beyond its checkpoint."""
    path = run_dir / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    with atomic_write(path) as f:  # a full disk must not cut the records before the checkpoint
        f.write("".join(k + "\n" for k in kept))
