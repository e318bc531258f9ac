"""Checkpoints (:mod:`cnnbench.run.checkpoint`): every state as plain data, last.pt after every epoch, a truncated
or incompatible one refused naming the file, a kill during a write leaving the previous one."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch

from cnnbench.errors import CheckpointError, ResumeRefused
from cnnbench.run.checkpoint import load_checkpoint, save_checkpoint
from cnnbench.run.train import train
from tests.helpers import STATEFUL_OPTIMIZER, cfg_for


def test_checkpoint_holds_every_state_as_plain_data(fake_data, tmp_path):
    """The values, not only the keys: progress, momentum buffers, the schedule's position, RNG states."""
    import random

    import numpy as np

    from cnnbench.run.checkpoint import set_rng_state

    summary = train(cfg_for(fake_data, "trainer.epochs=1", *STATEFUL_OPTIMIZER, "scheduler=cosine"), tmp_path)
    torch_rng, python_rng = torch.get_rng_state(), random.getstate()  # nothing draws after the last save
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # no OmegaConf objects inside
    steps = 256 // 32
    assert summary["steps"] == steps and state["epoch"] == 1 and state["step"] == steps
    assert isinstance(state["config"], dict) and state["config"]["scheduler"]["name"] == "cosine"
    assert state["scheduler"]["last_epoch"] == steps  # one scheduler step per optimizer step
    buffers = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert len(buffers) == len(state["model"]) - sum("running" in k or "num_batches" in k for k in state["model"])
    assert all(b.abs().sum() > 0 for b in buffers)  # momentum accumulated, not a fresh optimizer
    assert state["optimizer"]["param_groups"][0]["lr"] < 0.05  # the cosine rate after 8 of 8 steps
    assert torch.equal(state["rng"]["torch"], torch_rng)
    assert random.getstate() == python_rng
    set_rng_state(state["rng"])  # restoring twice gives the same draws from every generator
    draws = (torch.rand(3), np.random.rand(3).tolist(), random.random())
    set_rng_state(state["rng"])
    again = (torch.rand(3), np.random.rand(3).tolist(), random.random())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


def test_last_pt_is_written_after_every_epoch(fake_data, tmp_path, monkeypatch):
    """One checkpoint per epoch, also for epochs without an evaluation, holding that epoch's progress."""
    saved = []
    real_save = torch.save

    def spy(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "epoch" in obj:
            saved.append((obj["epoch"], obj["step"]))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    train(cfg_for(fake_data, "trainer.epochs=3", "trainer.eval_every=2"), tmp_path / "on")
    assert saved == [(1, 8), (2, 16), (3, 24)]
    saved.clear()
    train(cfg_for(fake_data, "trainer.epochs=2", "trainer.checkpoint=false"), tmp_path / "off")
    assert saved == [] and not (tmp_path / "off" / "last.pt").exists()


# ------------------------------------------------------------------------------------- checkpoints


def test_truncated_checkpoint_is_refused_with_the_file_named(fake_data, tmp_path):
    train(cfg_for(fake_data, "trainer.epochs=1"), tmp_path / "run")
    ckpt = tmp_path / "run" / "last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} is corrupt or truncated"):
        load_checkpoint(ckpt)
    summary = train(cfg_for(fake_data, "trainer.epochs=2", "trainer.resume=auto"), tmp_path / "run")
    assert summary["status"] == "failed"
    assert "CheckpointError" in summary["error"] and str(ckpt) in summary["error"]
    assert ckpt.read_bytes() == data[: len(data) // 2]  # the refused file is left for inspection


def test_incompatible_checkpoint_is_refused(fake_data, tmp_path):
    train(cfg_for(fake_data, "trainer.epochs=1"), tmp_path / "lenet")
    with pytest.raises(ResumeRefused, match="model.name: lenet -> lenet_bn"):  # refused before touching anything
        train(cfg_for(fake_data, "model=lenet_bn", f"trainer.resume={tmp_path / 'lenet' / 'last.pt'}"), tmp_path / "bn")
    assert not (tmp_path / "bn").exists()
    summary = train(cfg_for(fake_data, "model=lenet_bn", "trainer.resume_force=true",
                            f"trainer.resume={tmp_path / 'lenet' / 'last.pt'}"), tmp_path / "bn")
    assert summary["status"] == "failed"
    assert "holds a 'lenet' network, but the run trains 'lenet_bn'" in summary["error"]
    torch.save({"just": "weights"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a cnnbench checkpoint: missing"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_kill_during_write_leaves_the_previous_checkpoint(tmp_path):
    """A writer killed with SIGKILL mid-write leaves last.pt intact; its temporary file is never loaded."""
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"model": {}, "optimizer": {}, "epoch": 1, "step": 10, "config": {}, "rng": {}})
    script = (
        "import sys, torch, os\n"
        "from pathlib import Path\n"
        "import cnnbench.run.checkpoint as c\n"
        "real = torch.save\n"
        "def slow_save(obj, f):\n"
        "    f.write(b'x' * 1000); f.flush(); os.kill(os.getpid(), 9)\n"
        "torch.save = slow_save\n"
        f"c.save_checkpoint(Path({str(target)!r}), {{'model': {{}}, 'optimizer': {{}}, 'epoch': 2, 'step': 20, "
        "'config': {}, 'rng': {}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(target)["epoch"] == 1
    strays = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert strays and all(name.startswith(".") and name.endswith(".tmp") for name in strays)
