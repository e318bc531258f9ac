"""A run folder recorded by an older cnnbench (:mod:`cnnbench.run.recorded`): keys added since missing, the
logger one flat option. eval, track, report and a resume read it through the same preparation step: today's
shape, the missing keys at today's defaults, the recorded facts kept."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cnnbench.cli import main
from cnnbench.config import compose_config
from cnnbench.evaluation.inference import read_run_config
from cnnbench.report.runs import read_run
from cnnbench.run.recorded import compose_recorded
from cnnbench.schema import TrainerConfig, check_sections
from cnnbench.tracking.record import read_folder

ADDED_SINCE = (("trainer", "divergence_loss"), ("trainer", "objective"), ("trainer", "chance_patience"),
               ("dataset", "val_seed"))


@pytest.fixture
def old_run(trained_run, tmp_path) -> Path:
    """``trained_run`` as an older cnnbench recorded it: keys added since are missing, one key it had is gone
    from today's schema, the logger is one flat option, and Hydra's record names the options it chose."""
    run = tmp_path / "old_run"
    shutil.copytree(trained_run, run)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    for section, key in ADDED_SINCE:
        del config[section][key]
    config["trainer"]["retired_knob"] = 3
    config["logger"] = {"name": "mlflow", "tracking_uri": f"sqlite:///{tmp_path}/old.db", "log_model": False}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"model": "lenet_bn", "dataset": "fashion_mnist_mini", "optimizer": "sgd", "logger": "mlflow",
               "hydra/launcher": "basic"}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"runtime": {"choices": choices, "config_sources": [], "cwd": str(tmp_path)},
                   "job": {"config_name": "train"}}}))
    return run


def test_an_old_record_reads_in_todays_shape_with_its_facts(old_run, trained_run):
    cfg = read_run_config(old_run)
    today = compose_config(["model=lenet_bn", "dataset=fashion_mnist_mini", "logger=mlflow"])
    for section, key in ADDED_SINCE:  # added since: today's default
        assert cfg[section][key] == today[section][key]
    assert "retired_knob" not in cfg.trainer  # gone from today's schema: dropped
    recorded = OmegaConf.load(trained_run / ".hydra" / "config.yaml")
    for key in ("classes", "in_channels", "num_classes", "mean", "std"):  # the facts recorded stay
        assert cfg.dataset[key] == recorded.dataset[key]
    assert cfg.model == recorded.model and cfg.trainer.epochs == recorded.trainer.epochs
    assert list(cfg.logger) == ["mlflow"] and cfg.logger.mlflow.tracking_uri.endswith("/old.db")
    assert cfg.logger.mlflow.timeout_s == today.logger.mlflow.timeout_s
    sections = check_sections(cfg)  # the typed sections of today's schema, as a new run has them
    assert isinstance(sections["trainer"], TrainerConfig) and "logger.mlflow" in sections


def test_a_record_without_hydras_choices_keeps_its_own_options(trained_run, tmp_path):
    """A run made by ``train()`` directly (no .hydra/hydra.yaml): its options read from the section names."""
    recorded = OmegaConf.load(trained_run / ".hydra" / "config.yaml")
    recorded.optimizer = {"name": "adam", "lr": 0.01, "betas": [0.9, 0.999]}  # weight_decay: added since
    cfg = compose_recorded(recorded, tmp_path)
    assert cfg.optimizer.lr == 0.01 and list(cfg.optimizer.betas) == [0.9, 0.999] and "momentum" not in cfg.optimizer
    assert cfg.optimizer.weight_decay == compose_config(["optimizer=adam"]).optimizer.weight_decay
    assert cfg.model.name == "lenet_bn" and cfg.dataset.name == "fashion_mnist_mini"


def test_eval_reads_an_old_run_folder(old_run, trained_run, capsys):
    assert main(["eval", str(old_run)]) == 0
    assert "test" in capsys.readouterr().out
    assert json.loads((old_run / "summary.json").read_text())["status"] == "completed"


def test_track_and_report_read_an_old_run_folders_logger(old_run):
    run = read_folder(old_run)
    assert run.config.logger.mlflow.tracking_uri.endswith("/old.db")  # cnnbench track's store: the run's own
    settings = read_run(old_run, old_run.parent).settings
    assert settings["logger.mlflow.tracking_uri"].endswith("/old.db") and "logger.name" not in settings
    assert settings["trainer.divergence_loss"] == str(compose_config([]).trainer.divergence_loss)


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")  # MLflow's store, SQLAlchemy 2.1
def test_resuming_an_old_run_folder_keeps_its_tracker_settings(fake_data, tmp_path):
    """A run folder whose checkpoint and records hold the old flat logger section (``logger.tracking_uri``
    given as earlier versions spelled it) resumes with its own tracker settings, seeing no logger change."""
    import torch

    from tests.helpers import fast_overrides

    pytest.importorskip("mlflow")
    run, store = tmp_path / "run", f"sqlite:///{tmp_path}/old.db"
    common = [*fast_overrides(fake_data), "model=lenet", "trainer.batch_size=64", "trainer.limit_train_batches=2",
              "trainer.limit_eval_batches=1", f"hydra.run.dir={run}"]
    assert main(["train", *common, "trainer.epochs=1", "logger=mlflow", f"logger.tracking_uri={store}"]) == 0
    state = torch.load(run / "last.pt", weights_only=True)  # as an older cnnbench saved it
    state["config"]["logger"] = {"name": "mlflow", **state["config"]["logger"]["mlflow"]}
    torch.save(state, run / "last.pt")
    record = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    record["logger"] = {"name": "mlflow", **record["logger"]["mlflow"]}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(record))

    assert main(["train", *common, "trainer.epochs=2", "trainer.resume=auto"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    [changed] = [line for line in (run / "train.log").read_text().splitlines() if "changed settings" in line]
    assert "trainer.epochs: 1 -> 2" in changed and "logger" not in changed  # the same tracker, not a change
    resumed = OmegaConf.load(sorted((run / ".hydra" / "resumes").glob("*/config.yaml"))[-1])
    assert resumed.logger.mlflow.tracking_uri == store  # the folder's own tracker, carried to the resume
