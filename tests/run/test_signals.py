"""Stop signals (:mod:`cnnbench.run.signals`): each one finishes the step and checkpoints, in process and through
the command (exit 130); a second signal stops at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from cnnbench.run.train import train
from tests.helpers import HeldStep, cfg_for, fast_overrides, stop_process, text_of, wait_until


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2], ids=lambda s: s.name)
def test_each_stop_signal_finishes_the_step_and_checkpoints_in_process(fake_data, tmp_path, sig, monkeypatch):
    """In ``train()`` itself: a stop signal delivered inside the third training step (from that step's
    first forward call) ends the run after that step, interrupted, with a checkpoint of exactly it."""
    calls = []

    def signal_in_step_three(module, args):
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 1 and module.training:
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), sig)

    # A signal the run did not take lands here, not in pytest (whose SIGINT would end the session).
    missed = []
    previous = signal.signal(sig, lambda signum, frame: missed.append(signum))
    handle = torch.nn.modules.module.register_module_forward_pre_hook(signal_in_step_three)
    try:
        summary = train(cfg_for(fake_data, "trainer.batch_size=16", "trainer.epochs=5"), tmp_path)
    finally:
        handle.remove()
        signal.signal(sig, previous)
    assert not missed
    assert summary["status"] == "interrupted" and summary["steps"] == 3 and len(calls) == 3
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM,
                                 pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                 pytest.param(signal.SIGUSR2, marks=pytest.mark.slow)], ids=lambda s: s.name)
def test_each_stop_signal_checkpoints_and_exits_130(fake_data, tmp_path, sig):
    """Ctrl-C, a scheduler's SIGTERM and SLURM's SIGUSR2 all finish the step, checkpoint and exit 130
    (the command; the same three in-process are in the fast suite above)."""
    run_dir = tmp_path / "run"
    held = HeldStep(tmp_path / "gate", run_dir / "metrics.jsonl", '"kind": "train"')
    proc = subprocess.Popen(held.argv("train", *fast_overrides(fake_data, "trainer.batch_size=16", "trainer.epochs=200",
                                                               f"hydra.run.dir={run_dir}")),
                            env=held.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        held.wait_held(proc)  # inside a step: the signal arrives while it runs
        proc.send_signal(sig)
        held.release()
        out, _ = proc.communicate(timeout=120)
    finally:
        stop_process(proc)
    assert proc.returncode == 130, out
    assert f"{sig.name} received" in out and "checkpoint written" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] < 200
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == summary["steps"]


def test_second_signal_during_training_stops_at_once(fake_data, tmp_path):
    """The first SIGTERM comes inside a step (held there), the second while that step still runs: the
    process ends by the signal at once, without finishing the step or writing a checkpoint."""
    run_dir = tmp_path / "run"
    held = HeldStep(tmp_path / "gate", run_dir / "metrics.jsonl", '"kind": "train"')
    args = held.argv("train", *fast_overrides(fake_data, "trainer.batch_size=16", "trainer.epochs=5",
                                              "trainer.logs_per_epoch=16", f"hydra.run.dir={run_dir}"))
    proc = subprocess.Popen(args, env=held.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def received() -> int:  # first signals handled, as the run's log file tells
        return text_of(run_dir / "train.log").count("SIGTERM received")

    try:
        held.wait_held(proc)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: received() == 1, "the first SIGTERM handled (train.log)", [proc])
        proc.send_signal(signal.SIGTERM)  # the step is still held: a signal apart from the first, not merged
        wait_until(lambda: proc.poll() is not None or received() == 2, "the second SIGTERM handled")
        held.release()  # a process the second signal did not end would now finish the step and checkpoint
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert proc.returncode == -signal.SIGTERM, out  # ended by the signal itself, not by a clean exit
    assert "second SIGTERM: stopping now" in out
    assert "checkpoint written" not in out and not (run_dir / "last.pt").exists()


def test_second_signal_stops_at_once(tmp_path):
    script = (
        "import os, signal, time\n"
        "from cnnbench.run.signals import GracefulStop\n"
        "with GracefulStop() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert stop.requested\n"
        "    print('first handled', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "    print('should not get here', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert "first handled" in proc.stdout and "should not get here" not in proc.stdout


def test_an_epoch_resumed_mid_way_reports_the_speed_of_its_rest(fake_data, tmp_path):
    """Interrupted after 3 steps of 16 and resumed: the resumed epoch's examples/sec counts the 208 examples
    trained after the resume (256 - 48), not the epoch's 256, over the seconds after the resume."""

    def signal_in_step_three(module, args, calls=[]):  # noqa: B006 (the count of this one run's calls)
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 1 and module.training:
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(signal_in_step_three)
    try:
        first = train(cfg_for(fake_data, "trainer.batch_size=16", "trainer.epochs=1"), tmp_path)
    finally:
        handle.remove()
    assert first["status"] == "interrupted" and first["steps"] == 3
    resumed = train(cfg_for(fake_data, "trainer.batch_size=16", "trainer.epochs=1", "trainer.resume=auto"), tmp_path)
    assert resumed["status"] == "completed"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r.get("kind") == "epoch" and r.get("epoch") == 1)
    assert epoch["throughput/examples_per_sec"] * epoch["time/epoch_s"] == pytest.approx(256 - 48)
    # the run's own speed: every example once, over both starts' training seconds
    assert resumed["examples_per_sec"] * resumed["train_time_s"] == pytest.approx(256)
