"""logger=mlflow (:mod:`cnnbench.tracking.live`) and ``cnnbench track``: what a run, a sweep and a resumed run leave
in MLflow, read back through MLflow's own client; an unreachable tracker costs one warning and nothing else.

Every test writes to its own SQLite store in tmp_path, a copy of one empty store made once per session
(MLflow's schema migrations take ~3 s of CPU; a copy takes nothing).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from cnnbench.cli import main  # noqa: E402
from cnnbench.run.train import train  # noqa: E402
from cnnbench.tracking.record import (  # noqa: E402
    KIND,
    KIND_TAG,
    TRACKING_IDS,
    VIEW_KEY,
    VIEW_TAG,
    experiment_name,
)
from tests.helpers import compose_fast, fast_overrides  # noqa: E402

# MLflow's SQLite store and SQLAlchemy 2.1 (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

FAST = ("trainer.batch_size=32", "trainer.epochs=1", "trainer.limit_train_batches=4", "trainer.limit_eval_batches=2",
        "trainer.logs_per_epoch=2")


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made and nothing in it."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_store, tmp_path) -> str:
    """This test's own store (a copy of the empty one): its tracking URI."""
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    shutil.copyfile(empty_store, path)
    return f"sqlite:///{path}"


def client(uri: str):
    return mlflow.MlflowClient(tracking_uri=uri)


def run_id_of(run_dir: Path, uri: str) -> str:
    return json.loads((run_dir / TRACKING_IDS).read_text())[uri]["run_id"]


def history(c, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))


def artifacts(c, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in c.list_artifacts(run_id, path):
        found |= artifacts(c, run_id, item.path) if item.is_dir else {item.path}
    return found


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged_run(fake_data, tmp_path_factory, empty_store) -> tuple[Path, str]:
    """One ``cnnbench train logger=mlflow`` run (in-process, through Hydra): its folder and store URI."""
    root = tmp_path_factory.mktemp("logged")
    shutil.copyfile(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_dir = root / "run"
    code = main(["train", *fast_overrides(fake_data, *FAST), "experiment=d2l_lenet",
                 "logger=mlflow", f"logger.tracking_uri={uri}", f"hydra.run.dir={run_dir}"])
    assert code == 0
    return run_dir, uri


def test_a_run_records_params_metric_histories_tags_and_artifacts(logged_run):
    run_dir, uri = logged_run
    c = client(uri)
    run = c.get_run(run_id_of(run_dir, uri))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert c.get_experiment(run.info.experiment_id).name == "cnnbench"
    # params: TensorBoard's HParams names, and the rest of the resolved config under dotted keys
    params = run.data.params
    assert params["model"] == "lenet" and params["batch_size"] == "32" and float(params["lr"]) == 0.9
    assert params["optimizer.momentum"] == "0.0" and params["trainer.limit_train_batches"] == "4"
    assert "optimizer.lr" not in params and "trainer.batch_size" not in params  # one name per setting
    # every metric at its step: the train points of metrics.jsonl, one test point per epoch
    logged = records(run_dir)
    train_points = [(r["step"], r["train/loss"]) for r in logged if r["kind"] == "train"]
    assert history(c, run.info.run_id, "train/loss") == train_points
    assert [s for s, _ in history(c, run.info.run_id, "lr")] == [s for s, _ in train_points]
    assert history(c, run.info.run_id, "test/acc") == [(4, pytest.approx(summary["test/acc"]))]
    assert history(c, run.info.run_id, "throughput/examples_per_sec")
    # the summary's final figures and tags
    assert run.data.metrics["model/params"] == summary["params"]
    assert run.data.metrics["time/wall_s"] == pytest.approx(summary["wall_time_s"])
    tags = run.data.tags
    assert (tags["model"], tags["dataset"], tags["recipe"], tags["status"]) == (
        "lenet", "fashion_mnist", "d2l_lenet", "completed")
    # the commit of cnnbench's code: the checkout's, the one an installed wheel was built from, or none in a copy
    # of the source without .git (an unpacked sdist carries its build commit): the tag says what the summary says
    from cnnbench.machine import source_info

    commit = source_info()["commit"]
    assert summary["source_commit"] == commit and tags.get("mlflow.source.git.commit") == commit
    # the artifacts a user wants next to the run
    assert {"summary.json", "metrics.jsonl", "train.log", ".hydra/config.yaml", ".hydra/overrides.yaml",
            "confusion_test.png"} <= artifacts(c, run.info.run_id)
    assert "last.pt" not in artifacts(c, run.info.run_id)  # logger.log_model=false


def test_tensorboard_keeps_its_tags(logged_run):
    """The records' wall-clock ``time`` (what the tracker's points carry) is no TensorBoard scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = logged_run
    assert all(isinstance(r["time"], float) for r in records(run_dir))
    scalars = set(EventAccumulator(str(run_dir)).Reload().Tags()["scalars"])
    assert "train/loss" in scalars and "time" not in scalars


def test_track_records_what_the_live_run_recorded(logged_run, store, capsys):
    """One code path: ``cnnbench track`` into another store gives the same params, histories (values,
    steps and times) and artifacts; tracking the folder again adds nothing."""
    run_dir, live_uri = logged_run
    assert main(["track", str(run_dir), "--tracking-uri", store]) == 0
    assert "uploaded" in capsys.readouterr().out
    live, tracked = client(live_uri), client(store)
    a, b = live.get_run(run_id_of(run_dir, live_uri)), tracked.get_run(run_id_of(run_dir, store))
    assert a.data.params == b.data.params
    assert a.data.metrics == b.data.metrics
    assert {k: v for k, v in a.data.tags.items() if not k.startswith("mlflow.")} == {
        k: v for k, v in b.data.tags.items() if not k.startswith("mlflow.")}
    for key in ("train/loss", "train/acc", "lr", "test/acc", "epoch"):
        assert ([(m.step, m.value, m.timestamp) for m in live.get_metric_history(a.info.run_id, key)]
                == [(m.step, m.value, m.timestamp) for m in tracked.get_metric_history(b.info.run_id, key)]), key
    assert artifacts(live, a.info.run_id) == artifacts(tracked, b.info.run_id)
    assert b.info.status == "FINISHED"
    before = history(tracked, b.info.run_id, "train/loss")
    assert main(["track", str(run_dir), "--tracking-uri", store]) == 0
    assert "continued" in capsys.readouterr().out
    assert history(tracked, b.info.run_id, "train/loss") == before  # no second copy of any point
    assert len(tracked.search_runs([b.info.experiment_id])) == 1
    # into the store the run logged to live: the same run, and still one point per step of every metric
    assert main(["track", str(run_dir), "--tracking-uri", live_uri]) == 0
    assert run_id_of(run_dir, live_uri) == a.info.run_id
    for key in a.data.metrics:
        points = history(live, a.info.run_id, key)
        assert len(points) == len({s for s, _ in points}), key


def test_a_resumed_run_continues_the_same_mlflow_run(fake_data, tmp_path, store):
    """The run id is kept in the run folder: the resumed run adds its epochs to the same MLflow run."""
    run_dir = tmp_path / "run"
    common = ("logger=mlflow", f"logger.tracking_uri={store}", *FAST)
    assert train(compose_fast(fake_data, *common), run_dir)["status"] == "completed"
    first = run_id_of(run_dir, store)
    summary = train(compose_fast(fake_data, *common, "trainer.epochs=2", "trainer.resume=auto"), run_dir)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    c = client(store)
    assert run_id_of(run_dir, store) == first
    (run,) = c.search_runs([c.get_experiment_by_name("cnnbench").experiment_id])
    assert run.info.run_id == first and run.info.status == "FINISHED"
    epochs = [r for r in records(run_dir) if r["kind"] == "epoch"]
    assert history(c, first, "test/acc") == [(r["step"], r["test/acc"]) for r in epochs]
    assert [s for s, _ in history(c, first, "test/acc")] == [4, 8]
    assert [s for s, _ in history(c, first, "train/loss")] == [2, 4, 6, 8]  # no point twice
    assert run.data.params["epochs"] == "1"  # a param is written once: the first start's value stays
    assert run.data.tags["resumes"] == "1"


def test_a_fresh_start_in_a_used_folder_is_a_new_mlflow_run(fake_data, tmp_path, store):
    """Only a resume continues the folder's run (a failed sweep job rerun from scratch is a new attempt);
    logger.log_model uploads the checkpoint."""
    from cnnbench.tracking.record import write_ids

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    c = client(store)
    old = c.create_run(c.create_experiment("cnnbench", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    write_ids(run_dir, store, "1", old)
    assert train(compose_fast(fake_data, "logger=mlflow", f"logger.tracking_uri={store}", "logger.log_model=true",
                              *FAST), run_dir)["status"] == "completed"
    new = run_id_of(run_dir, store)
    assert new != old
    assert history(c, old, "train/loss") == [] and len(history(c, new, "train/loss")) == 2
    assert "model/last.pt" in artifacts(c, new)  # logger.log_model=true, no monitor: last.pt


def tracker_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and ("mlflow" in r.name.lower() or "MLflow" in r.getMessage())]


def test_a_refusing_tracker_is_one_warning_and_the_run_completes(fake_data, tmp_path, store, caplog, capsys):
    """Nothing listens on port 9: one warning, a completed run with complete files, and ``cnnbench track``
    uploads it afterwards."""
    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO)
    cfg = compose_fast(fake_data, "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9", *FAST, "trainer.epochs=2")
    summary = train(cfg, run_dir)
    assert summary["status"] == "completed"
    # the one warning of the whole run: none from urllib3's retry or MLflow's own loggers
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert tracker_warnings(caplog) == [warning]
    assert "cannot connect" in warning and f"cnnbench track {run_dir}" in warning
    assert summary["warnings"] == [warning]
    assert [r["step"] for r in records(run_dir) if r["kind"] == "epoch"] == [4, 8]
    assert not (run_dir / TRACKING_IDS).exists()
    (run_dir / ".hydra").mkdir()  # what the command line would have written
    (run_dir / ".hydra" / "config.yaml").write_text(__import__("omegaconf").OmegaConf.to_yaml(cfg))
    tracked_at = time.time() * 1000
    assert main(["track", str(run_dir), "--tracking-uri", store]) == 0
    run = client(store).get_run(run_id_of(run_dir, store))
    assert run.info.start_time < run.info.end_time <= tracked_at  # when it trained, not when it was uploaded
    assert [s for s, _ in history(client(store), run.info.run_id, "test/acc")] == [4, 8]
    assert run.data.params["model"] == "lenet" and run.info.status == "FINISHED"
    assert main(["track", str(run_dir)]) == 1  # its own logger.tracking_uri still refuses: one line
    assert capsys.readouterr().out.splitlines()[-2:] == [f"failed {run_dir}: cannot connect: Connection refused",
                                                          "0 of 1 runs uploaded to http://127.0.0.1:9"]


@pytest.fixture
def silent_server():
    """A server that accepts connections and never answers: its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, done = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_tracker_that_never_answers_does_not_hold_the_run(fake_data, tmp_path, silent_server, caplog,
                                                           monkeypatch):
    """Requests wait on the worker thread only: with a 30 s request timeout the run ends as fast as
    ever, its end waits logger.finish_timeout_s for the tracker, and says so once. The worker starts
    after the build (MLflow's import beside the build would skew its autotuning timings)."""
    import cnnbench.run.train as train_module

    caplog.set_level(logging.INFO)
    beside_build = []

    def build_run(*args, **kwargs):
        beside_build.extend(t.name for t in threading.enumerate() if t.name == "cnnbench-mlflow")
        return real_build(*args, **kwargs)

    real_build = train_module.build_run
    monkeypatch.setattr(train_module, "build_run", build_run)
    cfg = compose_fast(fake_data, "logger=mlflow", f"logger.tracking_uri={silent_server}", "logger.timeout_s=30",
                       "logger.retries=0", "logger.finish_timeout_s=0.5", *FAST)
    start = time.perf_counter()
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    assert time.perf_counter() - start < 25  # not the 30 s a request waits
    (warning,) = tracker_warnings(caplog)
    assert "did not finish within 0.5 s" in warning
    assert beside_build == []


def test_track_uploads_a_sweep_under_one_parent_run(tmp_path, store, capsys):
    """A sweep folder (jobs of a multirun, here written by hand; no multirun.yaml, as under the Optuna
    sweeper) is one experiment named by the folder, its jobs children of a parent run named by it."""
    from omegaconf import OmegaConf

    sweep = tmp_path / "sweep"
    sweep.mkdir()

    def job(i: int, lr: float) -> Path:
        folder = sweep / f"{i}_optimizer.lr={lr}"
        (folder / ".hydra").mkdir(parents=True)
        cfg = compose_fast("/nonexistent", f"optimizer.lr={lr}")
        (folder / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (folder / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": {
            "mode": "MULTIRUN", "overrides": {"task": [f"optimizer.lr={lr}", "trainer.epochs=1"]},
            "job": {"config": {"override_dirname": {"exclude_keys": ["trainer.epochs"]}}}}}))
        (folder / "summary.json").write_text(json.dumps({"status": "completed", "model": "lenet", "steps": 2,
                                                         "overrides": [f"optimizer.lr={lr}"], "test/acc": lr}))
        (folder / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "step": 2, "epoch": 1, "test/acc": lr,
                                                          "time": 1.5e9}) + "\n")
        return folder

    job(0, 0.1)
    job(1, 0.3)
    assert main(["track", str(sweep), "--tracking-uri", store]) == 0
    # a job added later, tracked on its own and into another experiment name: it joins its parent's
    assert main(["track", str(job(2, 0.9)), "--tracking-uri", store, "--experiment", "elsewhere"]) == 0
    c = client(store)
    experiment = c.get_experiment_by_name(experiment_name(None, sweep))
    assert experiment.name.startswith("sweep (") and "/" not in experiment.name  # the UI shows a name's last part
    runs = {r.info.run_name: r for r in c.search_runs([experiment.experiment_id])}
    assert set(runs) == {"sweep", "lr=0.1", "lr=0.3", "lr=0.9"}  # jobs named by their swept values
    parent = runs.pop("sweep")
    # the experiment opens in MLflow's model-training mode, on a view with the swept params and key metrics
    assert experiment.tags[KIND_TAG] == KIND
    view = json.loads(experiment.tags[VIEW_TAG + VIEW_KEY])
    assert view["selectedColumns"][:2] == ["params.`lr`", "metrics.`test/acc`"]
    assert view["runsExpanded"] == {parent.info.run_id: True}
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/completed"] == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert {r.data.params["lr"]: r.data.metrics["test/acc"] for r in runs.values()} == {
        "0.1": 0.1, "0.3": 0.3, "0.9": 0.9}


@pytest.mark.slow  # four jobs through Hydra and a new store (~9 s)
def test_a_2x2_sweep_is_one_experiment_with_a_parent_run(fake_data, tmp_path, capfd):
    """A new store, made by the sweep (its tables' INFO lines kept out of the output)."""
    sweep, store = tmp_path / "sweep", f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    (tmp_path / "new").mkdir()
    code = main(["train", "-m", *fast_overrides(fake_data, *FAST), "logger=mlflow", f"logger.tracking_uri={store}",
                 "model=lenet,lenet_bn", "optimizer.lr=0.1,0.3", f"hydra.sweep.dir={sweep}"])
    assert code == 0
    out, err = capfd.readouterr()
    assert "Creating initial MLflow database tables" not in out + err and "alembic" not in out + err
    c = client(store)
    (experiment,) = [e for e in c.search_experiments() if e.name != "Default"]
    assert experiment.name == experiment_name(None, sweep)
    runs = {r.info.run_name: r for r in c.search_runs([experiment.experiment_id])}
    parent = runs.pop(sweep.name)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/jobs"] == 4
    assert "multirun.yaml" in artifacts(c, parent.info.run_id)
    assert sorted(runs) == ["lenet, lr=0.1", "lenet, lr=0.3", "lenet_bn, lr=0.1", "lenet_bn, lr=0.3"]
    view = json.loads(experiment.tags[VIEW_TAG + VIEW_KEY])
    assert view["selectedColumns"][:3] == ["params.`model`", "params.`lr`", "metrics.`test/acc`"]
    # the UI command once, in the sweep's closing lines, with the runs view's address
    assert (out + err).count("mlflow ui --backend-store-uri") == 1
    assert f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in out + err
    for name, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert name == f"{run.data.params['model']}, lr={run.data.params['lr']}"
        folder = Path(run.data.tags["cnnbench.folder"])
        summary = json.loads((folder / "summary.json").read_text())
        assert history(c, run.info.run_id, "test/acc") == [(4, pytest.approx(summary["test/acc"]))]
        assert ".hydra/config.yaml" in artifacts(c, run.info.run_id)


def test_mlflow_logger_without_mlflow_is_refused_before_anything(fake_data, tmp_path, monkeypatch, capsys):
    import importlib.util

    monkeypatch.chdir(tmp_path)  # had it started, its default store would be outputs/mlflow.db of the current folder
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    run_dir = tmp_path / "run"
    assert main(["train", *fast_overrides(fake_data), "logger=mlflow", f"hydra.run.dir={run_dir}"]) == 2
    assert "pip install 'cnnbench[mlflow]'" in capsys.readouterr().err
    assert not run_dir.exists()


def test_bad_logger_values_are_one_line_before_anything(fake_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    for bad, words in (("logger.timeout_s=0", "logger.mlflow.timeout_s must be a positive number"),
                       ("logger.tracking_uri=outputs/mlflow.db", "logger.mlflow.tracking_uri must be a URI")):
        assert main(["train", *fast_overrides(fake_data), "logger=mlflow", bad, f"hydra.run.dir={run_dir}"]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and err.count("\n") == 0
    assert not run_dir.exists()


def test_the_sweeps_closing_lines_say_how_to_open_its_runs_in_mlflow(tmp_path, store, caplog):
    from omegaconf import OmegaConf

    from cnnbench.commands.sweeps import sweep_closing_lines
    from cnnbench.tracking.live import sweep_browse_lines
    from cnnbench.tracking.record import write_ids
    from cnnbench.tracking.trackers import typed_settings

    settings = typed_settings("mlflow", OmegaConf.create({"tracking_uri": store}))
    write_ids(tmp_path, store, "7", "abc")
    lines = sweep_browse_lines(settings, tmp_path)
    assert lines[0].startswith(f"mlflow ui --backend-store-uri {store}") and f"mlflow>={mlflow.__version__}" in lines[0]
    assert lines[1] == "then open http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning" \
                       "&viewStateShareKey=cnnbench"
    assert sweep_browse_lines(None, tmp_path) == []  # no logger=mlflow
    with caplog.at_level(logging.INFO):
        sweep_closing_lines(tmp_path, [{"status": "completed", "error": None, "run_dir": "x"}], lines)
    assert "in MLflow:    mlflow ui --backend-store-uri" in caplog.text and "then open http" in caplog.text
