"""The run's trackers as one list (:mod:`cnnbench.tracking.trackers`): each record reaches every tracker, one
tracker's failure is its own, and summary.json lists it."""

from __future__ import annotations

from omegaconf import OmegaConf

from cnnbench.run.train import train
from cnnbench.tracking import trackers as trackers_module
from cnnbench.tracking.trackers import Trackers, tracker_sections
from tests.helpers import compose_fast


class Recording:
    def __init__(self, fail: bool = False) -> None:
        self.records, self.started, self.finished, self.fail, self.warning = [], 0, None, fail, None

    def start(self) -> None:
        self.started += 1

    def log(self, kind, record) -> None:
        if self.fail:
            self.warning = "recording tracker stopped"
            return
        self.records.append((kind, record["step"]))

    def finish(self, summary) -> None:
        self.finished = summary["status"]


def test_every_tracker_gets_every_record(fake_data, tmp_path, monkeypatch):
    opened = {"one": Recording(), "two": Recording(fail=True)}
    monkeypatch.setattr(trackers_module, "open_trackers", lambda *a, **k: Trackers(list(opened.values())))
    monkeypatch.setattr("cnnbench.run.train.open_trackers", trackers_module.open_trackers)
    summary = train(compose_fast(fake_data, "model=lenet", "trainer.epochs=2", "trainer.batch_size=64",
                                 "trainer.limit_train_batches=2", "trainer.logs_per_epoch=1"), tmp_path / "run")
    assert summary["status"] == "completed"
    one = opened["one"]
    assert one.started == 1 and one.finished == "completed"
    assert one.records == [("train", 2), ("epoch", 2), ("train", 4), ("epoch", 4)]
    assert summary["warnings"] == ["recording tracker stopped"]  # the failed one, named; the run went on


def test_tracker_sections_read_one_option_or_a_list():
    one = OmegaConf.create({"logger": {"name": "mlflow", "tracking_uri": None}})
    assert [n for n, _ in tracker_sections(one)] == ["mlflow"]
    listed = OmegaConf.create({"logger": [{"name": "tensorboard"}, {"name": "mlflow"}, {"name": "wandb"}]})
    assert [n for n, _ in tracker_sections(listed)] == ["mlflow", "wandb"]
    assert tracker_sections(OmegaConf.create({"logger": {"name": "tensorboard"}})) == []
    assert tracker_sections(OmegaConf.create({})) == []  # a config recorded before trackers existed
