"""Sweeps: failure-tolerant multirun, resumed sweeps, reports, TensorBoard across a sweep, Hydra plugins."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cnnbench.config import compose_config
from cnnbench.report import build_report, cmd_report

from .conftest import cli

COMMON = ["dataset.download=false", "trainer.batch_size=64", "device=cpu"]


def sweep(data, out: Path, *overrides: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    epochs = [] if any(o.startswith("trainer.epochs=") for o in overrides) else ["trainer.epochs=1"]
    args = cli("train", "-m", f"dataset.root={data}", *COMMON, *epochs, *overrides)
    if out is not None:
        args.append(f"hydra.sweep.dir={out}")
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=cwd)


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
    assert {"model", "optimizer.lr"} <= set(rows[0]) and "trainer.epochs" not in rows[0]
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


def test_resumed_sweep_skips_completed_jobs(fake_data, tmp_path):
    """Rerunning the same command with resume_sweep=true finds the sweep itself and redoes only the rest."""
    cmd = ["optimizer.lr=0.5,1e6", "trainer.logs_per_epoch=4"]
    first = sweep(fake_data, None, *cmd, cwd=tmp_path)
    assert first.returncode == 1
    (folder,) = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    done = folder / "0_optimizer.lr=0.5" / "summary.json"
    stamp = done.stat().st_mtime_ns

    again = sweep(fake_data, None, *cmd, "resume_sweep=true", cwd=tmp_path)
    log = again.stdout + again.stderr
    assert again.returncode == 1  # the diverging job diverges again
    assert list((tmp_path / "outputs" / "multirun").glob("*/*")) == [folder]  # no new sweep folder
    assert done.stat().st_mtime_ns == stamp and "already completed, skipping it" in log
    assert (folder / "1_optimizer.lr=1000000.0" / "summary.previous.json").exists()


def test_resume_sweep_without_an_earlier_sweep_is_refused(fake_data, tmp_path):
    proc = sweep(fake_data, None, "optimizer.lr=0.5,0.9", "resume_sweep=true", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no earlier sweep with these overrides" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_tensorboard_serves_every_job_under_its_overrides(grid):
    port = free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(grid), "--port", str(port),
                           "--host", "127.0.0.1", "--reload_interval", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
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
            assert {"train/loss", "train/acc", "test/acc", "lr", "throughput/examples_per_sec"} <= set(run_tags)
        run = "2_model=lenet_bn,optimizer.lr=0.3"
        points = get_json(f"{base}/data/plugin/scalars/scalars?run={urllib.request.quote(run)}&tag=test/acc")
        assert points[-1][2] == pytest.approx(summaries(grid)[run]["test/acc"])
        req = urllib.request.Request(f"{base}/data/plugin/hparams/experiment", method="POST",
                                     data=json.dumps({"experimentName": ""}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            experiment = json.loads(r.read())
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"model", "lr", "batch_size"} <= names
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= {"hparam/test_acc"}
    finally:
        tb.terminate()
        tb.wait(timeout=30)


@pytest.mark.parametrize("option", ["hydra/launcher=parallel", "hydra/launcher=slurm", "hydra/sweeper=lr_search"])
def test_plugin_configs_compose(option):
    cfg = compose_config([option], return_hydra_config=True)
    target = cfg.hydra.launcher._target_ if "launcher" in option else cfg.hydra.sweeper._target_
    assert target.startswith("hydra_plugins.")


def test_joblib_launcher_runs_jobs_in_parallel_processes(fake_data, tmp_path):
    out = tmp_path / "sweep"
    proc = sweep(fake_data, out, "hydra/launcher=parallel", "model=lenet,lenet_bn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [s["status"] for s in summaries(out).values()] == ["completed", "completed"]


def test_joblib_sweep_reports_a_failure_from_another_process(fake_data, tmp_path):
    out = tmp_path / "sweep"
    proc = sweep(fake_data, out, "hydra/launcher=parallel", "optimizer.lr=0.5,1e6", "trainer.logs_per_epoch=4")
    assert proc.returncode == 1
    assert "1 of 2 jobs completed" in proc.stdout + proc.stderr


def test_optuna_sweeper_maximizes_test_accuracy(fake_data, tmp_path):
    out = tmp_path / "sweep"
    proc = sweep(fake_data, out, "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=3", "model=lenet_bn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(summaries(out)) == 3
    best = (out / "optimization_results.yaml").read_text()
    assert "best_value" in best
    best_acc = max(s["test/acc"] for s in summaries(out).values())
    assert f"best_value: {best_acc}" in best
