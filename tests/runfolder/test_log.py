"""TensorBoard's first screen: the loss and accuracy curves first, HParams on the curves' own tags with
one name per setting, and a custom-scalars layout with the book's chart."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench.run.train import train
from cnnbench.runfolder.log import RunLogger, hparams_of, swept_keys
from tests.helpers import REPO, compose_fast, fast_overrides, start_tensorboard, stop_process

# MLflow's SQLite store and SQLAlchemy 2.1 (not ours to fix; the tracked sweep's tests)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

CURVES = {"test/acc", "test/loss", "train/acc", "train/loss"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# `mlflow ui` needs the full mlflow (its server; cnnbench's extra is the client only): $CNNBENCH_MLFLOW_UI names
# its command where it lives apart (a virtual environment of its own), else the one beside this Python.
MLFLOW_UI = os.environ.get("CNNBENCH_MLFLOW_UI") or (
    str(Path(sys.executable).with_name("mlflow")) if importlib.util.find_spec("flask") is not None
    and importlib.util.find_spec("mlflow.server") is not None else None)


def dashboard_shots():
    """scripts/dashboard_shots.py as a module (scripts/ is not a package): the headless browser's helpers."""
    spec = importlib.util.spec_from_file_location("dashboard_shots", REPO / "scripts" / "dashboard_shots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_runs(fake_data, tmp_path_factory) -> Path:
    """Two finished runs in one folder, as a sweep leaves them."""
    root = tmp_path_factory.mktemp("board")
    for name, model in (("0_model=lenet", "lenet"), ("1_model=lenet_bn", "lenet_bn")):
        summary = train(compose_fast(fake_data, f"model={model}", "trainer.epochs=2", "trainer.batch_size=64"),
                        root / name)
        assert summary["status"] == "completed"
    return root


def test_hparams_have_one_name_per_setting(fake_data):
    cfg = compose_fast(fake_data, "optimizer.lr=0.3", "dataset.resize=32", "optimizer=sgd_momentum")
    hp = hparams_of(cfg, ["model=lenet", "optimizer=sgd_momentum", "optimizer.lr=0.3", "dataset.resize=32",
                          "trainer.batch_size=256", "optimizer.momentum=0.8", "hydra.run.dir=x"])
    assert hp["lr"] == 0.3 and hp["resize"] == 32 and hp["optimizer"] == cfg.optimizer.name
    assert hp["optimizer.momentum"] == "0.8"  # an override with no short name keeps its own
    assert not {"optimizer.lr", "dataset.resize", "trainer.batch_size"} & set(hp)
    assert not [k for k in hp if k.startswith("hydra")]


def test_event_files_open_on_the_curves_with_the_books_chart(two_runs):
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = two_runs / "1_model=lenet_bn"
    events = EventAccumulator(str(run), size_guidance={"tensors": 0, "images": 0}).Reload()
    scalars, images = events.Tags()["scalars"], events.Tags()["images"]
    assert CURVES <= set(scalars) and not [t for t in scalars if t.startswith("hparam")]
    # Time Series sorts its card groups (a tag up to its first "/") by name and opens the first two.
    groups = sorted({tag.split("/")[0] for tag in [*scalars, *images]})
    assert groups[:2] == ["test", "train"], groups
    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = [(c.title, list(c.multiline.tag)) for cat in layout.category for c in cat.chart]
    # the book's chart, one chart per curve: a sweep's runs stay legible (one line per run in each)
    assert charts == [("train loss", ["^train/loss$"]), ("train accuracy", ["^train/acc$"]),
                      ("test accuracy", ["^test/acc$"])]
    experiment = next(data for data in (plugin_data_pb2.HParamsPluginData.FromString(content)
                                        for content in events.PluginTagToContent("hparams").values())
                      if data.HasField("experiment"))
    assert {m.name.tag for m in experiment.experiment.metric_infos} == CURVES  # existing tags, no copies


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_time_series_shows_the_curves_first_in_a_real_browser(two_runs, tmp_path):
    """What a user sees on opening TensorBoard: headless Chromium renders the page; the cards it renders
    are those on the first screen (Time Series renders cards lazily, as they scroll into view)."""
    tb, base = start_tensorboard(two_runs, tmp_path / "tensorboard.log")
    try:
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900", "--virtual-time-budget=15000",
             "--dump-dom", f"{base}/"], capture_output=True, text=True, timeout=180).stdout
    finally:
        stop_process(tb)
    groups = re.findall(r'class="group-title" title="([^"]+)"', dom)
    cards = set(re.findall(r'class="tag"[^>]* title="([^"]+)"', dom))
    assert groups[:2] == ["test", "train"], groups
    assert {"train/loss", "train/acc", "test/acc"} <= cards and not [c for c in cards if c not in CURVES], cards


def test_a_sweeps_varied_settings_come_first_and_name_the_trial(fake_data, tmp_path):
    """The HParams entry of a sweep job: its swept settings first and marked as differing (TensorBoard lists
    those first and ticks the first five), the trial named by their values."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = compose_fast(fake_data, "model=lenet_bn", "optimizer.lr=0.3", "trainer.epochs=2")
    overrides = ["model=lenet_bn", "optimizer.lr=0.3", "trainer.epochs=2"]
    swept = ["model", "optimizer.lr"]
    hp = hparams_of(cfg, overrides, swept)
    assert list(hp)[:2] == ["model", "lr"]
    rlog = RunLogger(tmp_path)
    rlog.log("epoch", {"step": 1, "test/acc": 0.5})
    rlog.log_hparams(hp, swept)
    rlog.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0}).Reload()
    data = [plugin_data_pb2.HParamsPluginData.FromString(content)
            for content in events.PluginTagToContent("hparams").values()]
    (experiment,) = [d.experiment for d in data if d.HasField("experiment")]
    assert {i.name for i in experiment.hparam_infos if i.differs} == {"model", "lr"}
    (start,) = [d.session_start_info for d in data if d.HasField("session_start_info")]
    assert start.group_name == "lenet_bn, lr=0.3"


def test_swept_keys_are_a_multiruns_overrides_that_differ_between_jobs():
    """The keys every job shares are those the sweep's job naming excludes from folder names."""
    from omegaconf import OmegaConf

    job = {"mode": "MULTIRUN", "overrides": {"task": ["logger=mlflow", "model=lenet", "optimizer.lr=0.3"]},
           "job": {"config": {"override_dirname": {"exclude_keys": ["logger", "hydra.sweep.dir"]}}}}
    assert swept_keys(OmegaConf.create(job)) == ["model", "optimizer.lr"]
    assert swept_keys(OmegaConf.create({**job, "mode": "RUN"})) == []  # a single run varies nothing
    assert swept_keys(None) == [] and swept_keys(OmegaConf.create({"mode": "MULTIRUN"})) == []


@pytest.fixture(scope="module")
def tracked_sweep(fake_data, tmp_path_factory) -> tuple[Path, str]:
    """The 2x2 sweep of issue 36 (model x lr) with logger=mlflow: its folder and its store's URI."""
    pytest.importorskip("mlflow")
    from cnnbench.cli import main

    root = tmp_path_factory.mktemp("tracked")
    sweep, store = root / "sweep", f"sqlite:///{root / 'mlflow.db'}"
    code = main(["train", "-m", *fast_overrides(fake_data, "trainer.epochs=1", "trainer.batch_size=64",
                                                "trainer.limit_train_batches=2"),
                 "logger=mlflow", f"logger.tracking_uri={store}", "model=lenet,lenet_bn", "optimizer.lr=0.3,0.9",
                 f"hydra.sweep.dir={sweep}"])
    assert code == 0
    return sweep, store


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_the_hparams_table_opens_on_the_swept_settings_in_a_real_browser(tracked_sweep, tmp_path):
    """What a user sees in the HParams tab: the columns ticked first are the swept settings, the trials
    are named by their values (the grid's cells, read through the page's shadow roots)."""
    shots = dashboard_shots()
    sweep, _ = tracked_sweep
    with shots.tensorboard(sweep, tmp_path / "tb.log") as base, shots.browser() as page:
        page.open(base + "/#hparams")
        page.wait(f"({shots.DEEP_TEXT_JS})('vaadin-grid-cell-content').includes('lenet_bn, lr=0.9')")
        cells = page.deep_text("vaadin-grid-cell-content")
        page.shot(tmp_path / "hparams.png")
    assert cells[:4] == ["Trial ID", "Show Metrics", "lr", "model"], cells
    assert {"lenet, lr=0.3", "lenet, lr=0.9", "lenet_bn, lr=0.3", "lenet_bn, lr=0.9"} <= set(cells)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or MLFLOW_UI is None,
                    reason="needs Debian's chromium and the full mlflow (its UI server)")
def test_the_mlflow_runs_view_shows_the_swept_params_in_a_real_browser(tracked_sweep, tmp_path):
    """The address the sweep's closing lines print opens the runs table in model-training mode, with the
    swept params and the key metrics as columns and each job by its swept values."""
    import mlflow

    shots = dashboard_shots()
    sweep, store = tracked_sweep
    experiment_id = json.loads((sweep / "mlflow.json").read_text())[store]["experiment_id"]
    from cnnbench.tracking.record import runs_view_url

    with shots.mlflow_ui(MLFLOW_UI, store, tmp_path / "ui.log") as base, shots.browser((1800, 1000)) as page:
        page.open(runs_view_url(experiment_id, base))
        page.wait("document.body.innerText.includes('lenet_bn, lr=0.9')")
        text = page.eval("document.body.innerText")
        page.shot(tmp_path / "mlflow.png")
    header = [c.strip() for c in page_lines(text)]
    assert {"model", "lr", "test/acc", "examples_per_sec"} <= set(header), text
    assert {"lenet, lr=0.3", "lenet_bn, lr=0.3"} <= set(header), f"jobs folded or unnamed ({mlflow.__version__})"
    assert "Sort: test/acc" in text


def page_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
