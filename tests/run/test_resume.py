"""Resuming a run (:mod:`cnnbench.run.resume`): a killed run continued equals one never stopped, a given checkpoint,
the config changes a resume refuses or allows, and the first start's Hydra record kept."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from cnnbench.cli import main
from cnnbench.config import compose_config
from cnnbench.errors import ResumeRefused
from cnnbench.run.train import train
from tests.helpers import (
    BASE,
    STATEFUL_OPTIMIZER,
    HeldStep,
    assert_same_weights,
    cfg_for,
    cli,
    fast_overrides,
    final_weights,
    snapshot,
    stop_process,
)


@pytest.fixture(scope="module")
def one_epoch(fake_data, tmp_path_factory) -> Path:
    """A finished 1-epoch run (momentum SGD, step schedule) to resume from."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    assert train(cfg_for(fake_data, *BASE, "trainer.epochs=1"), run_dir)["status"] == "completed"
    return run_dir


@pytest.mark.parametrize("change,listed", [
    (["trainer.batch_size=16"], "trainer.batch_size: 32 -> 16"),
    (["optimizer.lr=0.01"], "optimizer.lr: 0.05 -> 0.01"),
    (["trainer.seed=1"], "trainer.seed: 0 -> 1"),
    (["model=lenet_bn"], "model.name: lenet -> lenet_bn"),
    (["dataset.resize=32"], "dataset.resize: null -> 32"),
    (["scheduler.gamma=0.5"], "scheduler.gamma: 0.1 -> 0.5"),
    (["optimizer=sgd", "optimizer.lr=0.05"], "optimizer.momentum: 0.9 -> 0.0"),
])
def test_resume_refuses_a_change_of_what_finished_epochs_mean(fake_data, one_epoch, change, listed):
    before = snapshot(one_epoch)
    cfg = cfg_for(fake_data, *BASE, "trainer.epochs=2", "trainer.resume=auto", *change)
    with pytest.raises(ResumeRefused) as refused:
        train(cfg, one_epoch)
    message = str(refused.value)
    assert message.startswith(f"cannot resume from {one_epoch / 'last.pt'}: it was written with other settings that "
                              "change what its 1 finished epochs mean: ") and listed in message
    assert "trainer.resume_force=true" in message and "\n" not in message
    assert snapshot(one_epoch) == before  # refused before anything was written


def test_resume_allows_epochs_logging_eval_and_device_changes(fake_data, one_epoch, tmp_path):
    """Settings that do not change the finished epochs: allowed, logged, recorded; the weights are those of
    a run never stopped."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, data in snapshot(one_epoch).items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(data)
    allowed = ["trainer.epochs=2", "trainer.logs_per_epoch=2", "trainer.eval_every=2", "device.cudnn_benchmark=false",
               "trainer.limit_eval_batches=3", "trainer.chance_patience=5"]
    summary = train(cfg_for(fake_data, *BASE, *allowed, "trainer.resume=auto"), run_dir)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    (record,) = summary["resumes"]
    assert record["from_epoch"] == 1 and record["forced"] is False
    assert record["changes"] == {"device.cudnn_benchmark": [True, False], "trainer.chance_patience": [3, 5],
                                 "trainer.epochs": [1, 2], "trainer.eval_every": [1, 2],
                                 "trainer.limit_eval_batches": [None, 3], "trainer.logs_per_epoch": [5, 2]}
    train(cfg_for(fake_data, *BASE, "trainer.epochs=2"), tmp_path / "straight")
    assert_same_weights(final_weights(run_dir), final_weights(tmp_path / "straight"))


def test_forced_resume_records_the_changes_and_uses_the_new_settings(fake_data, one_epoch, tmp_path):
    summary = train(cfg_for(fake_data, *BASE, "trainer.epochs=2", "optimizer.lr=0.01", "trainer.resume_force=true",
                            f"trainer.resume={one_epoch / 'last.pt'}"), tmp_path / "forced")
    assert summary["status"] == "completed"
    (record,) = summary["resumes"]
    assert record["forced"] is True and record["changes"]["optimizer.lr"] == [0.05, 0.01]
    assert json.loads((tmp_path / "forced" / "summary.json").read_text())["resumes"] == summary["resumes"]
    groups = torch.load(tmp_path / "forced" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert groups[0]["initial_lr"] == 0.01  # the new rate, not the checkpoint's (restoring would keep 0.05)
    assert groups[0]["lr"] == pytest.approx(0.01 * 0.1 ** 2)  # the step schedule's position carried over


def test_resume_keeps_the_first_starts_hydra_record(fake_data, tmp_path, capsys):
    """The CLI: .hydra/ stays the first start's; each resume gets .hydra/resumes/TIME/; a refusal writes nothing."""
    run_dir = tmp_path / "run"
    common = [*fast_overrides(fake_data, "trainer.batch_size=32"), f"hydra.run.dir={run_dir}"]
    assert main(["train", *common, "trainer.epochs=1"]) == 0
    first = snapshot(run_dir / ".hydra")
    assert main(["train", *common, "trainer.epochs=2", "trainer.resume=auto"]) == 0
    (resumed,) = list((run_dir / ".hydra" / "resumes").iterdir())
    assert {k: v for k, v in snapshot(run_dir / ".hydra").items() if not k.startswith("resumes")} == first
    assert "trainer.epochs=2" in (resumed / "overrides.yaml").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumes"][0]["hydra_record"] == f".hydra/resumes/{resumed.name}"
    before = snapshot(run_dir)
    capsys.readouterr()
    assert main(["train", *common, "trainer.epochs=3", "trainer.resume=auto", "trainer.batch_size=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "trainer.batch_size: 32 -> 64" in err
    assert snapshot(run_dir) == before


@pytest.mark.slow  # a whole command, stopped and resumed (~12 s); in-process resume tests below
def test_kill_and_resume_matches_an_uninterrupted_run(fake_data, tmp_path):
    """SIGTERM after the first epoch (inside the second epoch's first step), resume with
    trainer.resume=auto, compare with a run never stopped."""
    overrides = fast_overrides(fake_data, "trainer.batch_size=16", "trainer.deterministic=true", "trainer.epochs=12",
                               "model=lenet_bn", *STATEFUL_OPTIMIZER, "scheduler=cosine", "scheduler.warmup_epochs=1")
    run_dir = tmp_path / "killed"
    metrics = run_dir / "metrics.jsonl"
    held = HeldStep(tmp_path / "gate", metrics, '"kind": "epoch"')
    proc = subprocess.Popen(held.argv("train", *overrides, f"hydra.run.dir={run_dir}"), env=held.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        held.wait_held(proc)
        proc.send_signal(signal.SIGTERM)
        held.release()
        out, _ = proc.communicate(timeout=120)
    finally:
        stop_process(proc)
    assert proc.returncode == 130, out
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["status"] == "interrupted"
    assert stopped["epochs_completed"] == 1
    assert "checkpoint written" in out

    resumed = subprocess.run(cli("train", *overrides, f"hydra.run.dir={run_dir}", "trainer.resume=auto"),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
    done = json.loads((run_dir / "summary.json").read_text())
    assert done["status"] == "completed" and done["epochs_completed"] == 12

    reference = train(compose_config(overrides), tmp_path / "reference")
    assert reference["status"] == "completed"
    assert_same_weights(final_weights(run_dir), final_weights(tmp_path / "reference"))
    assert done["test/acc"] == reference["test/acc"]

    # metrics continue without duplicated or missing steps
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    ref_records = [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [(r["kind"], r["step"]) for r in ref_records]


def test_resume_from_a_given_checkpoint_path(fake_data, tmp_path):
    """Extend a 1-epoch run to 2 epochs from its last.pt: momentum buffers and the step schedule's
    position (the rate halves after each epoch) must carry over to give a 2-epoch run's weights."""
    schedule = [*STATEFUL_OPTIMIZER, "scheduler=step", "scheduler.step_epochs=1", "scheduler.gamma=0.5"]
    first = train(cfg_for(fake_data, "trainer.epochs=1", *schedule), tmp_path / "a")
    assert first["status"] == "completed"
    more = train(cfg_for(fake_data, "trainer.epochs=2", *schedule, f"trainer.resume={tmp_path / 'a' / 'last.pt'}"),
                 tmp_path / "b")
    train(cfg_for(fake_data, "trainer.epochs=2", *schedule), tmp_path / "c")
    assert more["status"] == "completed" and more["epochs_completed"] == 2
    assert_same_weights(final_weights(tmp_path / "b"), final_weights(tmp_path / "c"))
