"""Data-parallel training on the CPU: torchrun with two gloo processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from cnnbench.run.train import train
from tests.helpers import HeldStep, compose_fast, fast_overrides, stop_process

pytestmark = pytest.mark.slow  # torchrun: three interpreters a test (5-8 s each on 2 cores)
COMMON = ["trainer.batch_size=32", "trainer.deterministic=true", "trainer.epochs=2"]


def torchrun(*args: str, nproc: int = 2, program: tuple[str, ...] = ("-m", "cnnbench")) -> list[str]:
    """``cnnbench train ARGS`` under torchrun; ``program``: what each worker runs instead of ``-m cnnbench``
    (a script path taking cnnbench's command line)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *program, "train", *args]


def test_two_processes_match_one_with_the_same_global_batch(fake_data, tmp_path):
    # with a validation split: both ranks must hold out the same images for the sums to match
    overrides = fast_overrides(fake_data, *COMMON, "model=lenet", "dataset.val_size=40")
    run_dir = tmp_path / "ddp"
    proc = subprocess.run(torchrun(*overrides, f"hydra.run.dir={run_dir}"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # one run folder for both ranks

    single = train(compose_fast(fake_data, *COMMON, "model=lenet", "dataset.val_size=40"), tmp_path / "single")
    ddp_w = torch.load(run_dir / "last.pt", weights_only=True)["model"]
    one_w = torch.load(tmp_path / "single" / "last.pt", weights_only=True)["model"]
    for key in one_w:
        assert torch.allclose(ddp_w[key], one_w[key], atol=1e-5, rtol=0), key
    # evaluation is sharded and reduced: the accuracy is over the whole test set, as in one process
    assert summary["test/acc"] == pytest.approx(single["test/acc"], abs=1e-6)
    confusion = torch.load(run_dir / "last.pt", weights_only=True)["run_state"]["test_confusion"]
    assert sum(map(sum, confusion)) == 128  # every test image: both ranks' shards are counted
    assert summary["steps"] == single["steps"]
    assert summary["val/acc"] == pytest.approx(single["val/acc"], abs=1e-6)
    assert summary["best/epoch"] == single["best/epoch"]
    # Only rank 0 writes: one event file, one Hydra record, and each metric record once (a second writer
    # would add its own event file and a second copy of every line).
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    single_records = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [(r["kind"], r["step"]) for r in single_records]
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [".hydra", ".lock"]


def test_batchnorm_network_trains_data_parallel(fake_data, tmp_path):
    """LeNet-BN on two CPU processes (each keeping its own BatchNorm statistics) finishes and learns."""
    proc = subprocess.run(torchrun(*fast_overrides(fake_data, *COMMON, "model=lenet_bn", "optimizer.lr=0.5",
                                                   "trainer.epochs=3", f"hydra.run.dir={tmp_path / 'bn'}")),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "bn" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["test/acc"] > 0.5


def test_rank_0s_kept_decision_trains_both_ranks_and_the_next_run(fake_data, tmp_path):
    """With the layout and the convolutions left to timing, the first torchrun run times (rank 0) and keeps
    the decision at each rank's batch; the next run reads it and gives the same metrics."""
    records = []
    for name in ("first", "next"):
        overrides = fast_overrides(fake_data, "model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=1",
                                   "device.channels_last=auto", "device.conv_weight_grad=auto",
                                   f"hydra.run.dir={tmp_path / name}")
        proc = subprocess.run(torchrun(*overrides), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["speed"]["autotune"]["source"] == ("timed" if name == "first" else "cache")
        assert summary["speed"]["autotune"]["key"]["batch"] == 16  # one rank's share
        timing = ("throughput/examples_per_sec", "time/epoch_s", "time")  # what a wall clock gives
        records.append([{k: v for k, v in json.loads(line).items() if k not in timing}
                        for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert records[0] == records[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, SyncBatchNorm is available")
def test_sync_batchnorm_on_cpus_is_refused_before_training(fake_data, tmp_path):
    """PyTorch's SyncBatchNorm only runs on CUDA: on CPUs the request is refused with one clear line."""
    proc = subprocess.run(torchrun(*fast_overrides(fake_data, *COMMON, "model=lenet_bn",
                                                   "trainer.sync_batchnorm=true", f"hydra.run.dir={tmp_path / 'bn'}")),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "trainer.sync_batchnorm=true needs CUDA devices" in proc.stderr
    assert not (tmp_path / "bn").exists()


def test_sigterm_to_one_rank_stops_both_with_one_checkpoint(fake_data, tmp_path):
    """SIGTERM to rank 1 only (which writes nothing), inside a step of the second epoch: both ranks stop
    after that step, and rank 0 writes one checkpoint."""
    run_dir = tmp_path / "run"
    # Rank 1 holds inside the first step it starts after the first epoch's record (HeldStep); rank 0
    # waits for it in the step's gradient all-reduce.
    held = HeldStep(tmp_path / "gate", run_dir / "metrics.jsonl", '"kind": "epoch"', rank=1)
    # Its own process group, so that a failed assertion can kill the agent and both workers at once.
    proc = subprocess.Popen(torchrun(*fast_overrides(fake_data, "trainer.batch_size=16", "trainer.epochs=50",
                                                     "model=lenet", f"hydra.run.dir={run_dir}"),
                                     program=(str(held.script),)),
                            env=held.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        rank1 = held.wait_held(proc)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2 and str(rank1) in workers
        os.kill(rank1, signal.SIGTERM)  # one rank only
        held.release()
        out, _ = proc.communicate(timeout=300)
    finally:
        stop_process(proc)
    assert proc.returncode != 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", out
    assert 1 <= summary["epochs_completed"] < 50
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == summary["steps"]
    assert [p.name for p in run_dir.iterdir() if p.suffix == ".pt" or p.name.endswith(".tmp")] == ["last.pt"]


def test_indivisible_global_batch_is_refused(fake_data, tmp_path):
    overrides = fast_overrides(fake_data, "trainer.batch_size=33", f"hydra.run.dir={tmp_path / 'x'}")
    proc = subprocess.run(torchrun(*overrides),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "trainer.batch_size=33 is the global batch and must divide evenly over the 2 processes" in proc.stderr
    assert not (tmp_path / "x").exists()
