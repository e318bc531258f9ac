"""What is recorded to MLflow (:mod:`cnnbench.tracking.record`): one point per key and step, TensorBoard's hparams as
params, class names with slashes, a sweep's experiment name."""

from __future__ import annotations

from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from cnnbench.tracking.record import (  # noqa: E402
    experiment_name,
    final_metrics,
    metric_points,
    params_of,
)
from tests.helpers import compose_fast  # noqa: E402

# MLflow's SQLite store and SQLAlchemy 2.1 (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def test_records_become_one_point_per_key_and_step():
    """The epoch record's train figures repeat the epoch's last train point: sent once."""
    recs = [{"kind": "train", "step": 4, "epoch": 1.0, "train/loss": 2.0, "lr": 0.1, "time": 10.0},
            {"kind": "epoch", "step": 4, "epoch": 1, "train/loss": 2.0, "test/acc": 0.5, "time": 11.0,
             "time/epoch_s": 3.0, "val/acc": None}]
    points = {(p.key, p.step, p.timestamp) for p in metric_points(recs)}
    assert points == {("train/loss", 4, 10000), ("epoch", 4, 10000), ("lr", 4, 10000), ("test/acc", 4, 11000),
                      ("time/epoch_s", 4, 11000)}


def test_params_are_tensorboards_hparams_and_the_resolved_config():
    from cnnbench.runfolder.log import hparams_of

    cfg = compose_fast("/nonexistent", "trainer.ema.decay=0.99")
    params = params_of(cfg, ["trainer.ema.decay=0.99"])
    assert set(hparams_of(cfg, ["trainer.ema.decay=0.99"])) <= set(params)
    assert params["trainer.ema.decay"] == "0.99" and params["seed"] == "0" and "trainer.seed" not in params
    assert params["dataset.classes"].startswith('["T-shirt/top"')


def test_a_class_name_with_a_slash_stays_in_the_class_section():
    """MLflow's UI makes a chart section of a key's part before its last "/": "T-shirt/top" must not open one."""
    metrics = final_metrics({"test/per_class_acc": {"T-shirt/top": 0.8, "Trouser": 0.9, "Ankle boot": 0.7}})
    classes = {k for k in metrics if k.startswith("test/class_acc/")}
    assert classes == {"test/class_acc/T-shirt_top", "test/class_acc/Trouser", "test/class_acc/Ankle boot"}
    assert {k.rsplit("/", 1)[0] for k in classes} == {"test/class_acc"}


def test_a_sweeps_experiment_name_starts_with_its_time_and_has_no_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = Path("outputs/multirun/2026-12-07/09-20-21-996625")
    assert experiment_name(None, sweep) == "2026-12-07 09-20-21-996625 (outputs · multirun)"
    assert experiment_name("mine", sweep) == "mine" and experiment_name(None, None) == "cnnbench"
    assert "/" not in experiment_name(None, Path("/data/sweeps/grid"))
