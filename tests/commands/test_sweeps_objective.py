"""Searching sweeps: the objective each job returns (trainer.objective), the sweeper's direction checked
against it before launch, failed trials returned as failures, and the best job named and marked."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cnnbench.commands.sweeps import best_trial, check_sweeper_direction, job_return
from cnnbench.errors import ConfigError
from cnnbench.report import build_report, report_text
from cnnbench.run.selection import objective_value
from cnnbench.run.validate import validate_config
from tests.helpers import cli, compose_fast, fast_overrides

OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
NEVERGRAD = "hydra_plugins.hydra_nevergrad_sweeper.nevergrad_sweeper.NevergradSweeper"
AX = "hydra_plugins.hydra_ax_sweeper.ax_sweeper.AxSweeper"
BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def search(data: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """A 3-trial search under Hydra's own Optuna config (not lr_search), as the issue's command runs it."""
    args = cli("train", "-m", *fast_overrides(data, "trainer.batch_size=64"), "hydra/sweeper=optuna",
               "hydra.sweeper.n_trials=3", "dataset.val_size=64",
               "trainer.epochs=1", "trainer.logs_per_epoch=4", *overrides, f"hydra.sweep.dir={out}")
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def summaries(folder: Path) -> dict[Path, dict]:
    return {p.parent: json.loads(p.read_text()) for p in folder.glob("*/summary.json")}


def reported_best(log: str) -> tuple[Path, float, float]:
    """(run folder, objective value, test acc) of the closing lines' best job."""
    match = re.search(r"best of \d+ jobs by \S+ \(.*?\): .*\n\s+\S+ ([\d.]+); test acc ([\d.]+) \(reported, never "
                      r"used to choose\)\n\s+run folder: (.+)", log)
    assert match, log
    return Path(match.group(3).strip()), float(match.group(1)), float(match.group(2))


# ------------------------------------------------------------------------------- before launch


def test_optunas_default_direction_with_val_acc_is_refused_before_any_folder(fake_data, tmp_path):
    """Hydra's Optuna config minimizes by default: with val/acc it would search for the worst learning rate."""
    out = tmp_path / "sweep"
    proc = search(fake_data, out, "optimizer.lr=interval(0.01,1.0)")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "cnnbench train: error: hydra.sweeper.direction=minimize would search for the worst val/acc (higher is "
        "better): set hydra.sweeper.direction=maximize, or trainer.objective=val/loss"]
    assert not out.exists()


@pytest.mark.parametrize(("sweeper", "objective", "setting"), [
    ({"_target_": OPTUNA, "direction": "minimize"}, "val/acc", "hydra.sweeper.direction=maximize"),
    ({"_target_": OPTUNA, "direction": "maximize"}, "val/loss", "hydra.sweeper.direction=minimize"),
    ({"_target_": OPTUNA, "direction": ["minimize"]}, "val/acc", "hydra.sweeper.direction=[maximize]"),
    ({"_target_": NEVERGRAD, "optim": {"maximize": False, "budget": 80}}, "val/acc",
     "hydra.sweeper.optim.maximize=true"),
    ({"_target_": AX, "ax_config": {"experiment": {"minimize": True}}}, "val/acc",
     "hydra.sweeper.ax_config.experiment.minimize=false"),
    ({"_target_": AX, "ax_config": {"experiment": {"minimize": False}}}, "val/loss",
     "hydra.sweeper.ax_config.experiment.minimize=true"),
])
def test_a_direction_against_the_objective_is_refused_naming_the_setting(sweeper, objective, setting):
    with pytest.raises(ConfigError, match=re.escape(f"set {setting},")):
        check_sweeper_direction(OmegaConf.create(sweeper), objective)


@pytest.mark.parametrize(("sweeper", "objective"), [
    ({"_target_": OPTUNA, "direction": "maximize"}, "val/acc"),
    ({"_target_": OPTUNA, "direction": "minimize"}, "val/loss"),
    ({"_target_": NEVERGRAD, "optim": {"maximize": True}}, "val/acc"),
    ({"_target_": AX, "ax_config": {"experiment": {"minimize": True}}}, "val/loss"),
    ({"_target_": "my.sweepers.Bayes", "maximize": True}, "val/acc"),  # any sweeper stating one
    ({"_target_": BASIC, "params": None}, "val/acc"),  # chooses nothing: nothing to check
])
def test_a_direction_that_agrees_passes_silently(sweeper, objective):
    assert check_sweeper_direction(OmegaConf.create(sweeper), objective) is None


def test_a_sweeper_whose_direction_cannot_be_read_gets_a_warning_naming_the_objective():
    sweeper = OmegaConf.create({"_target_": "my.sweepers.Bayes", "params": {"direction": "choice(a,b)"}})
    warning = check_sweeper_direction(sweeper, "val/loss")
    assert warning == ("the sweeper my.sweepers.Bayes states no direction cnnbench can read: make sure it minimizes "
                       "val/loss (lower is better), the value each job returns")
    odd = OmegaConf.create({"_target_": "my.sweepers.Bayes", "direction": "up"})
    assert "states hydra.sweeper.direction=up, neither minimize nor maximize" in check_sweeper_direction(odd, "val/acc")


def test_several_optuna_objectives_are_refused():
    sweeper = OmegaConf.create({"_target_": OPTUNA, "direction": ["maximize", "minimize"]})
    with pytest.raises(ConfigError, match=r"asks for 2 objectives, but each job returns one, val/acc \(higher is "
                                          r"better\): set hydra.sweeper.direction=maximize$"):
        check_sweeper_direction(sweeper, "val/acc")


def test_the_test_set_is_refused_as_objective(fake_data):
    cfg = compose_fast(fake_data, "dataset.val_size=64", "trainer.batch_size=64", "trainer.objective=test/acc")
    with pytest.raises(ConfigError, match=r"^trainer.objective=test/acc would choose among runs on the test set"):
        validate_config(cfg)


# ------------------------------------------------------------------------------ what a job returns


def test_a_job_returns_its_objective_and_a_failure_never_a_value_that_could_win():
    done = {"status": "completed", "best/epoch": 2, "best/val_acc": 0.91, "best/val_loss": 0.3, "val/acc": 0.8,
            "test/acc": 0.95, "best/test_acc": 0.93}
    assert job_return(done, "val/acc", OPTUNA) == 0.91  # the selected checkpoint's, never a test figure
    assert job_return(done, "val/loss", OPTUNA) == 0.3
    assert job_return({**done, "best/epoch": None}, "val/acc", BASIC) == 0.8  # nothing selected: the last epoch
    no_split = {"status": "completed", "best/epoch": None, "test/acc": 0.95}
    for failed in ({**done, "status": "diverged"}, no_split, {**done, "best/val_loss": float("nan")}):
        assert job_return(failed, "val/loss", OPTUNA) is None  # Optuna's plugin: not a number = failed trial
        assert math.isnan(job_return(failed, "val/loss", NEVERGRAD))


def test_the_best_trial_follows_the_objectives_direction_among_completed_jobs():
    jobs = [{"status": "completed", "objective": "val/loss", "objective_value": v, "run_dir": str(i)}
            for i, v in enumerate([0.5, 0.2, 0.2, 0.9])]
    jobs.append({"status": "diverged", "objective": "val/loss", "objective_value": 0.01, "run_dir": "4"})
    assert best_trial(jobs)["run_dir"] == "1"  # lowest loss, the first of equals; a failed job never wins
    accs = [{**j, "objective": "val/acc"} for j in jobs]
    assert best_trial(accs)["run_dir"] == "3"


def test_the_report_selects_and_ranks_by_the_recorded_objective(tmp_path):
    figures = {"0_lr=0.1": (0.40, 0.91), "1_lr=0.3": (0.30, 0.88), "2_lr=0.9": (0.55, 0.93)}  # (val loss, test)
    for name, (loss, test) in figures.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({
            "status": "completed", "model": "lenet", "test/acc": test, "monitor": "val/loss", "best/epoch": 1,
            "best/val_loss": loss, "best/val_acc": 0.9, "best/test_acc": test, "objective": "val/loss",
            "objective_value": loss, "overrides": [f"optimizer.lr={name.split('=')[1]}"]}))
    report = build_report(tmp_path)
    assert report.selected.name == "1_lr=0.3"  # the lowest validation loss, not the best test accuracy
    assert [r.name for r in report.runs] == ["1_lr=0.3", "0_lr=0.1", "2_lr=0.9"]
    text = report_text(report)
    assert "selected by validation loss: " in text and "(val loss 0.300; test acc of that checkpoint 0.8800" in text
    assert "1_lr=0.3" in next(line for line in text.splitlines() if "(selected)" in line)


# ------------------------------------------------------------------------------- a 3-trial search


@pytest.mark.slow  # a 3-trial Optuna search (~10 s)
@pytest.mark.parametrize(("objective", "direction"), [("val/loss", None), ("val/acc", "maximize")])
def test_a_search_reports_the_job_with_the_best_objective(fake_data, tmp_path, objective, direction):
    """val/loss with Optuna's default direction (minimize) runs as it is; val/acc runs once maximizing. The
    closing lines, Optuna's own result and the report all name the job whose summary has the best objective;
    a diverged trial (lr 1e6) is a failed trial, never the best."""
    out = tmp_path / "sweep"
    # TPE's seed 2 draws each learning rate once (its first trials are random); Optuna's grid sampler is
    # avoided: its sweeper crashes on a failed last grid point (GridSampler.after_trial calls Study.stop).
    proc = search(fake_data, out, f"trainer.objective={objective}", "hydra.sweeper.sampler.seed=2",
                  "optimizer.lr=choice(0.05,0.5,1000000.0)",
                  *([f"hydra.sweeper.direction={direction}"] if direction else []))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log  # the diverged job
    jobs = summaries(out)
    assert sorted(s["status"] for s in jobs.values()) == ["completed", "completed", "diverged"]
    assert "Traceback" not in log and "Failed experiment" in log  # Optuna counted it failed and went on
    done = {path: s for path, s in jobs.items() if s["status"] == "completed"}
    for s in done.values():
        assert s["objective"] == objective and s["objective_value"] == objective_value(s, objective)
        assert s["objective_value"] == s["best/" + objective.replace("/", "_")]
    pick = min if objective == "val/loss" else max
    best_value = pick(s["objective_value"] for s in done.values())
    folder, value, test = reported_best(log)
    assert done[folder]["objective_value"] == best_value and value == pytest.approx(best_value, abs=5e-5)
    assert test == pytest.approx(done[folder]["best/test_acc"], abs=5e-5)
    result = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert result["best_value"] == best_value
    assert build_report(out).selected.path == folder


@pytest.mark.slow  # a 2-trial Optuna search (~8 s)
def test_a_search_where_no_trial_completes_still_ends_with_its_outcome(fake_data, tmp_path):
    """Every trial failed (returned as failed, not as a number): Optuna's sweeper then raises "No trials are
    completed yet" itself; the command still lists the jobs and exits 1."""
    out = tmp_path / "sweep"
    proc = search(fake_data, out, "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize",
                  "optimizer.lr=choice(1000000.0)")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    assert [s["status"] for s in summaries(out).values()] == ["diverged", "diverged"]
    assert "No trials are completed yet" in log and f"sweep: 0 of 2 jobs completed in {out}" in log
    assert "best of" not in log
