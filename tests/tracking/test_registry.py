"""Trackers by name (:mod:`cnnbench.tracking.registry`): ``logger=[...]`` composes several, each option's keys
under its own name; every one found through the registry; the older single-option spellings still read."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import MISSING, OmegaConf

from cnnbench.config import ConfigSource, compose_config, logger_options, upgrade_overrides
from cnnbench.errors import ConfigError
from cnnbench.run.train import train
from cnnbench.run.validate import validate_config
from cnnbench.schema import Section
from cnnbench.tracking import registry
from cnnbench.tracking.trackers import open_trackers, tracker_sections, typed_settings
from tests.helpers import compose_fast, finished_wandb_records

FAST = ("model=lenet", "trainer.epochs=1", "trainer.batch_size=64", "trainer.limit_train_batches=2",
        "trainer.limit_eval_batches=1", "trainer.logs_per_epoch=1")


@pytest.mark.parametrize("option", sorted(logger_options()))
def test_every_logger_option_is_a_registered_tracker_typed_by_its_schema(option):
    """Each conf/logger option is found by name in the registry, and composes under its own name into that
    tracker's schema (a key the schema lacks, or a value of the wrong type, is refused when composed)."""
    entry = registry.tracker_entry(option)
    cfg = compose_config([f"logger={option}"])
    assert list(cfg.logger) == [option]
    assert OmegaConf.get_type(cfg.logger[option]) is entry.schema


def test_a_list_of_trackers_composes_each_under_its_own_name():
    cfg = compose_config(["logger=[tensorboard,mlflow,wandb]", "logger.mlflow.log_model=true",
                          "logger.wandb.project=mine"])
    assert list(cfg.logger) == ["tensorboard", "mlflow", "wandb"]
    assert cfg.logger.mlflow.log_model is True and cfg.logger.wandb.project == "mine"
    assert [name for name, _ in tracker_sections(cfg)] == ["mlflow", "wandb"]  # TensorBoard: the run folder's own


def test_the_old_single_option_spelling_still_composes():
    """``logger=mlflow logger.tracking_uri=X``, as users typed it before options composed side by side."""
    assert upgrade_overrides(["logger=mlflow", "logger.tracking_uri=http://h:5000", "+logger.x=1"]) == [
        "logger=mlflow", "logger.mlflow.tracking_uri=http://h:5000", "+logger.mlflow.x=1"]
    assert upgrade_overrides(["logger=[mlflow,wandb]", "logger.mlflow.retries=2"]) == [
        "logger=[mlflow,wandb]", "logger.mlflow.retries=2"]  # today's spelling is left alone
    cfg = compose_config(["logger=mlflow", "logger.tracking_uri=http://h:5000"])
    assert cfg.logger.mlflow.tracking_uri == "http://h:5000"


def test_an_old_run_folders_flat_logger_section_reads_as_todays():
    """``logger: {name: mlflow, ...}`` recorded by an older cnnbench: the same tracker, its missing keys at
    today's defaults, the recorded ones kept."""
    old = OmegaConf.create({"logger": {"name": "mlflow", "tracking_uri": "http://h:5000", "log_model": True}})
    [(name, settings)] = tracker_sections(old)
    typed = typed_settings(name, settings)
    assert name == "mlflow" and type(typed) is registry.tracker_entry("mlflow").schema
    assert typed.tracking_uri == "http://h:5000" and typed.log_model is True
    assert typed.retries == compose_config(["logger=mlflow"]).logger.mlflow.retries  # added since: today's
    assert tracker_sections(OmegaConf.create({"logger": {"name": "tensorboard"}})) == []
    assert registry.upgrade_logger(old) and list(old.logger) == ["mlflow"] and "name" not in old.logger.mlflow


def test_an_unknown_tracker_is_one_sentence():
    with pytest.raises(ConfigError, match=r"logger=nope: no such tracker; known: .*mlflow.*wandb"):
        registry.tracker_entry("nope")


@dataclass
class EchoConfig(Section):
    path: str = MISSING


class EchoTracker:
    """A tracker that writes each record's step to a file: what a new tracker needs, and nothing else."""

    warning = None

    def __init__(self, settings: EchoConfig, cfg, run_dir: Path, overrides, resuming) -> None:
        self.path = Path(settings.path)

    def start(self) -> None:
        pass

    def log(self, kind: str, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(f"{kind} {record['step']}\n")

    def finish(self, summary: dict) -> None:
        with self.path.open("a") as f:
            f.write(f"finish {summary['status']}\n")


def test_a_new_tracker_is_its_module_and_its_option_file(fake_data, tmp_path, monkeypatch):
    """Adding a tracker: a class registered by name with its schema (its module), and conf/logger/NAME.yaml
    (here in a --config-dir); nothing else is edited, and it runs beside the others."""
    monkeypatch.setitem(registry.TRACKERS, "echo", registry.TrackerEntry("echo", EchoConfig, EchoTracker))
    (tmp_path / "conf" / "logger").mkdir(parents=True)
    (tmp_path / "conf" / "logger" / "echo.yaml").write_text(
        "# @package logger.echo\ndefaults:\n  - /schema/logger/echo@_here_\n  - _self_\npath: unset\n")
    out = tmp_path / "echo.txt"
    from tests.helpers import fast_overrides

    cfg = compose_config(fast_overrides(fake_data, *FAST, "logger=[tensorboard,echo]", f"logger.echo.path={out}"),
                         source=ConfigSource(extra_dir=str(tmp_path / "conf")))
    spec = validate_config(cfg)
    assert type(spec.trackers["echo"]) is EchoConfig
    summary = train(cfg, tmp_path / "run", spec=spec)
    assert summary["status"] == "completed"
    assert out.read_text().splitlines() == ["train 2", "epoch 2", "finish completed"]


def test_a_run_without_trackers_writes_tensorboard_only(fake_data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_fast(fake_data, *FAST)
    assert open_trackers(cfg, run_dir, [], resuming=False).trackers == []
    assert train(cfg, run_dir)["status"] == "completed"
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "metrics.jsonl").is_file()
    assert not (run_dir / "wandb").exists() and not (run_dir / "mlflow.json").exists()


@pytest.mark.slow  # W&B starts its own service process: seconds
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's store, SQLAlchemy 2.1
def test_a_run_with_two_trackers_writes_both(fake_data, tmp_path, monkeypatch):
    """``logger=[mlflow,wandb]``: MLflow's local store and W&B's offline run files, read back, each hold the
    run's records at the same steps as metrics.jsonl."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the run folder is given explicitly
    store = tmp_path / "mlflow.db"
    run_dir = tmp_path / "run"
    summary = train(compose_fast(fake_data, *FAST, "logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri=sqlite:///{store}",
                                 "logger.wandb.tags=[both]"), run_dir)
    assert summary["status"] == "completed" and summary["warnings"] == []
    steps = sorted({json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()})

    with sqlite3.connect(store) as db:  # MLflow's own store, read without MLflow
        logged = sorted({step for (step,) in db.execute("SELECT step FROM metrics WHERE key = 'train/loss'")})
        status = db.execute("SELECT status FROM runs").fetchall()
    assert logged == steps and status == [("FINISHED",)]

    records = finished_wandb_records(run_dir)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert list(run.tags) == ["both"]
    history = sorted({int(r.history.step.num) for r in records if r.WhichOneof("record_type") == "history"})
    assert history == steps
