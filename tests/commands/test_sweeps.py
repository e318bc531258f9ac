"""Sweeps (:mod:`cnnbench.commands.sweeps`): failure-tolerant multirun, resumed sweeps, reports, TensorBoard across
a sweep, Hydra plugins."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from cnnbench.config import compose_config
from cnnbench.report import build_report, cmd_report
from cnnbench.run.train import train
from tests.helpers import HeldStep, cli, compose_fast, fast_overrides, start_tensorboard, stop_process


def sweep_args(data, out: Path | None, *overrides: str) -> list[str]:
    epochs = [] if any(o.startswith("trainer.epochs=") for o in overrides) else ["trainer.epochs=1"]
    args = cli("train", "-m", *fast_overrides(data, "trainer.batch_size=64"), *epochs, *overrides)
    return args + ([f"hydra.sweep.dir={out}"] if out is not None else [])


def sweep(data, out: Path | None, *overrides: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_args(data, out, *overrides), capture_output=True, text=True, timeout=600, cwd=cwd)


def summaries(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/summary.json"))}


@pytest.fixture(scope="module")
def grid(fake_data, tmp_path_factory) -> Path:
    """A 2x2 sweep, run once for the tests that read it."""
    out = tmp_path_factory.mktemp("grid") / "sweep"
    proc = sweep(fake_data, out, "model=lenet,lenet_bn", "optimizer.lr=0.3,0.9", "trainer.epochs=3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_grid_gives_four_named_run_folders_and_a_report(grid):
    jobs = sorted(p.name for p in grid.iterdir() if p.is_dir())
    assert jobs == ["0_model=lenet,optimizer.lr=0.3", "1_model=lenet,optimizer.lr=0.9",
                    "2_model=lenet_bn,optimizer.lr=0.3", "3_model=lenet_bn,optimizer.lr=0.9"]
    assert all(s["status"] == "completed" for s in summaries(grid).values())

    assert cmd_report([str(grid)]) == 0
    with (grid / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert {"model", "lr", "started"} <= set(rows[0]) and "trainer.epochs" not in rows[0]
    assert {r["model"] for r in rows} == {"lenet", "lenet_bn"} and {r["lr"] for r in rows} == {"0.3", "0.9"}
    by_dir = {Path(r["path"]).name: r for r in rows}
    for name, s in summaries(grid).items():  # the report's numbers are the summaries'
        assert float(by_dir[name]["test/acc"]) == s["test/acc"]
        assert float(by_dir[name]["train/loss"]) == s["train/loss"]
        assert int(by_dir[name]["params"]) == s["params"]
    accs = [float(r["test/acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert (grid / "report.md").stat().st_size > 0 and (grid / "report.png").stat().st_size > 10_000


def test_failing_job_does_not_stop_the_sweep(fake_data, tmp_path):
    out = tmp_path / "sweep"
    proc = sweep(fake_data, out, "optimizer.lr=0.5,1e6,0.9", "trainer.logs_per_epoch=4")
    assert proc.returncode == 1
    status = {name: s["status"] for name, s in summaries(out).items()}
    assert status == {"0_optimizer.lr=0.5": "completed", "1_optimizer.lr=1000000.0": "diverged",
                      "2_optimizer.lr=0.9": "completed"}
    log = proc.stdout + proc.stderr
    assert "2 of 3 jobs completed" in log
    assert "1_optimizer.lr=1000000.0: diverged: TrainingDiverged" in log

    report = build_report(out)
    assert report.runs[-1].status == "diverged"


@pytest.mark.slow  # two sweeps, 4 jobs (~10 s)
def test_resumed_sweep_skips_completed_jobs(fake_data, tmp_path):
    """Rerunning the same command with resume_sweep=true finds the sweep itself and redoes only the rest."""
    cmd = ["optimizer.lr=0.5,1e6", "trainer.logs_per_epoch=4"]
    first = sweep(fake_data, None, *cmd, cwd=tmp_path)
    assert first.returncode == 1
    (folder,) = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    done = folder / "0_optimizer.lr=0.5" / "summary.json"
    stamp = done.stat().st_mtime_ns
    diverged = json.loads((folder / "1_optimizer.lr=1000000.0" / "summary.json").read_text())

    again = sweep(fake_data, None, *cmd, "resume_sweep=true", cwd=tmp_path)
    log = again.stdout + again.stderr
    assert again.returncode == 1  # the diverging job diverges again
    assert list((tmp_path / "outputs" / "multirun").glob("*/*")) == [folder]  # no new sweep folder
    assert done.stat().st_mtime_ns == stamp and "already completed, skipping it" in log
    previous = json.loads((folder / "1_optimizer.lr=1000000.0" / "summary.previous.json").read_text())
    assert previous == diverged  # the first attempt's summary, kept whole
    assert previous["status"] == "diverged" and "TrainingDiverged" in previous["error"]


@pytest.mark.slow  # several processes (~10 s)
def test_resumed_sweep_continues_an_interrupted_job_from_its_checkpoint(fake_data, tmp_path):
    """SIGTERM during job 0: it stops with last.pt, the sweep runs job 1; resume_sweep=true then continues
    job 0 from its checkpoint (not from scratch) to the weights of a run never stopped, and skips job 1."""
    fixed = ["trainer.batch_size=16", "trainer.deterministic=true", "trainer.epochs=4"]
    out = tmp_path / "sweep"
    job0 = out / "0_optimizer.lr=0.3"
    # Job 0 holds inside the first step of its second epoch until the signal has come (HeldStep).
    held = HeldStep(tmp_path / "gate", job0 / "metrics.jsonl", '"kind": "epoch"')
    args = held.argv(*sweep_args(fake_data, out, "optimizer.lr=0.3,0.5", *fixed)[3:])
    proc = subprocess.Popen(args, env=held.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        held.wait_held(proc)
        proc.send_signal(signal.SIGTERM)
        held.release()
        first_out, _ = proc.communicate(timeout=300)
    finally:
        stop_process(proc)
    assert proc.returncode == 1, first_out  # one job interrupted: the sweep did not complete
    stopped = json.loads((job0 / "summary.json").read_text())
    assert stopped["status"] == "interrupted" and stopped["epochs_completed"] == 1
    assert summaries(out)["1_optimizer.lr=0.5"]["status"] == "completed"

    again = sweep(fake_data, out, "optimizer.lr=0.3,0.5", *fixed, "resume_sweep=true")
    log = again.stdout + again.stderr
    assert again.returncode == 0, log
    assert "already completed, skipping it" in log
    assert f"at epoch {stopped['epochs_completed']}, step {stopped['steps']}" in log  # from its checkpoint
    reference = train(compose_fast(fake_data, *fixed, "optimizer.lr=0.3"), tmp_path / "reference")
    resumed = torch.load(job0 / "last.pt", weights_only=True)["model"]
    expected = torch.load(tmp_path / "reference" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(resumed[k], expected[k], atol=1e-6, rtol=0) for k in expected)
    assert json.loads((job0 / "summary.json").read_text())["test/acc"] == reference["test/acc"]


def test_resume_sweep_without_an_earlier_sweep_is_refused(fake_data, tmp_path):
    proc = sweep(fake_data, None, "optimizer.lr=0.5,0.9", "resume_sweep=true", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no earlier sweep with these overrides" in proc.stderr


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post_json(url: str, body: dict):
    req = urllib.request.Request(url, method="POST", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_tensorboard_serves_every_job_under_its_overrides(grid, tmp_path):
    tb, base = start_tensorboard(grid, tmp_path / "tensorboard.log")
    try:
        deadline, tags = time.time() + 90, {}
        while time.time() < deadline:
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
                if len(tags) == 4 and all("test/acc" in t for t in tags.values()):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert sorted(tags) == sorted(p.name for p in grid.iterdir() if p.is_dir())
        for run_tags in tags.values():
            assert {"train/loss", "train/acc", "test/acc", "trainer/lr", "trainer/examples_per_sec"} <= set(run_tags)
            assert not [t for t in run_tags if t.startswith("hparam")]  # HParams reads the curves' own tags
        run = "2_model=lenet_bn,optimizer.lr=0.3"
        points = get_json(f"{base}/data/plugin/scalars/scalars?run={urllib.request.quote(run)}&tag=test/acc")
        assert points[-1][2] == pytest.approx(summaries(grid)[run]["test/acc"])
        experiment = post_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"model", "lr", "batch_size"} <= names and "optimizer.lr" not in names  # one name per setting
        # the swept settings first (the table ticks the first five), marked as differing; the constant ones after
        order = [(h["name"], h.get("differs", False)) for h in experiment["hparamInfos"]]
        assert order[:2] == [("lr", True), ("model", True)] and not [d for _, d in order[2:] if d], order
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} == {"test/acc", "test/loss", "train/acc",
                                                                          "train/loss"}
        groups = post_json(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"], "colParams": [],
            "startIndex": 0, "sliceSize": 100})["sessionGroups"]
        values = {g["name"]: {m["name"]["tag"]: m["value"] for m in g["metricValues"]} for g in groups}
        # trials named by their swept values (the folder name is cut after ~15 characters in the table)
        assert sorted(values) == ["lenet, lr=0.3", "lenet, lr=0.9", "lenet_bn, lr=0.3", "lenet_bn, lr=0.9"]
        assert values["lenet_bn, lr=0.3"]["test/acc"] == pytest.approx(summaries(grid)[run]["test/acc"])
    finally:
        stop_process(tb)


@pytest.mark.parametrize("option", ["hydra/launcher=parallel", "hydra/launcher=slurm", "hydra/sweeper=lr_search"])
def test_plugin_configs_compose(option):
    cfg = compose_config([option], return_hydra_config=True)
    target = cfg.hydra.launcher._target_ if "launcher" in option else cfg.hydra.sweeper._target_
    assert target.startswith("hydra_plugins.")


@pytest.mark.slow  # several processes (~10 s)
def test_joblib_launcher_runs_jobs_in_parallel_processes(fake_data, tmp_path):
    out = tmp_path / "sweep"
    proc = sweep(fake_data, out, "hydra/launcher=parallel", "model=lenet,lenet_bn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [s["status"] for s in summaries(out).values()] == ["completed", "completed"]


@pytest.mark.slow  # several processes (~10 s)
def test_joblib_sweep_reports_a_failure_from_another_process(fake_data, tmp_path):
    out = tmp_path / "sweep"
    proc = sweep(fake_data, out, "hydra/launcher=parallel", "optimizer.lr=0.5,1e6", "trainer.logs_per_epoch=4")
    assert proc.returncode == 1
    assert "1 of 2 jobs completed" in proc.stdout + proc.stderr


@pytest.mark.slow  # a sweep under the Optuna sweeper (~7 s)
def test_optuna_sweeper_maximizes_validation_accuracy(fake_data, tmp_path):
    """lr_search optimizes what each job's selected checkpoint scores on held-out training images;
    the test set plays no part (here its accuracies are made to disagree with the validation's)."""
    out = tmp_path / "sweep"
    proc = sweep(fake_data, out, "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=3", "model=lenet_bn",
                 "dataset.val_size=64", "trainer.epochs=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = summaries(out)
    assert len(jobs) == 3
    assert all(s["monitor"] == "val/acc" and s["best/val_acc"] is not None for s in jobs.values())
    result = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert result["best_value"] == max(s["best/val_acc"] for s in jobs.values())
    assert all(s["overrides"] and "dataset.val_size=64" in s["overrides"] for s in jobs.values())
    log = proc.stdout + proc.stderr  # plain text in a pipe: Optuna's lines without colours, no alembic set-up
    assert "\x1b[" not in log and "setup plugin" not in log
    assert "[HYDRA] A new study created in memory with name: cnnbench_lr_search" in log


def test_optimizing_sweep_without_a_validation_split_is_refused(fake_data, tmp_path):
    out = tmp_path / "sweep"
    proc = sweep(fake_data, out, "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=2", "dataset.val_size=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cnnbench train: error: a sweep that optimizes a metric needs a validation split, or it would choose "
        "on the test set: set dataset.val_size (e.g. 5000; hydra/sweeper=lr_search sets it)"]
    assert not out.exists()
