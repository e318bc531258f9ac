"""Nothing lost, nothing cryptic: resume, atomic checkpoints, signals, divergence, bad inputs, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnbench.cli import main
from cnnbench.config import compose_config
from cnnbench.data.idx import read_split
from cnnbench.errors import CheckpointError, DataError, ResumeRefused
from cnnbench.run.checkpoint import load_checkpoint, save_checkpoint
from cnnbench.run.train import train
from tests.helpers import (
    REPO,
    STATEFUL_OPTIMIZER,
    HeldStep,
    assert_same_weights,
    cfg_for,
    cli,
    fast_overrides,
    final_weights,
    stop_process,
    text_of,
    wait_until,
    write_fake_dataset,
    write_idx,
)

# --------------------------------------------------------------------------------------------- resume


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


def test_an_atomic_write_replaces_the_file_whole_or_not_at_all(tmp_path):
    """runfolder.disk's atomic writes (checkpoints, summary.json, the kernel library): the new content
    replaces the old one only when the block ends; an exception or a full disk leaves the old file and no
    temporary file; the full disk is one RunFileWriteError naming the file."""
    from cnnbench.errors import RunFileWriteError
    from cnnbench.runfolder.disk import atomic_path, atomic_write

    target = tmp_path / "summary.json"
    target.write_text("old")
    with atomic_write(target) as f:
        f.write("new")
        assert target.read_text() == "old"  # not yet: the rename comes when the block ends
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("the writer failed")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(RunFileWriteError, match=f"cannot write {target}"), atomic_write(target) as f:
        f.write("more")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# --------------------------------------------------------------------------------------------- signals


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


# ------------------------------------------------------------------------------------------ divergence


def test_diverging_learning_rate_stops_with_status_diverged(fake_data, tmp_path):
    summary = train(cfg_for(fake_data, "optimizer.lr=1e6", "trainer.epochs=3", "trainer.logs_per_epoch=8"), tmp_path)
    assert summary["status"] == "diverged"
    assert summary["diverged_at_step"] == 2  # one logging interval after the first (finite) step
    assert summary["last_finite_loss"] is not None
    assert "Try a lower learning rate than 1e+06" in summary["error"]
    assert summary["test/acc"] is None and summary["epochs_completed"] == 0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "diverged"


def test_nan_loss_is_caught_within_one_logging_interval(fake_data, tmp_path):
    summary = train(cfg_for(fake_data, "optimizer.lr=1e38", "trainer.divergence_loss=null",
                            "trainer.logs_per_epoch=8"), tmp_path)
    assert summary["status"] == "diverged"
    assert summary["diverged_at_step"] <= 3


def test_grad_clip_norm_bounds_each_step_to_the_hand_computed_norm(fake_data, tmp_path):
    """Plain SGD moves the weights by lr * g; clipped, ||g|| = clip exactly, so one step moves the whole
    parameter vector by lr * clip (the unclipped gradient of this LeNet is far larger than 0.05)."""
    def weights(name: str, *overrides: str) -> torch.Tensor:
        train(cfg_for(fake_data, "trainer.limit_train_batches=1", "trainer.epochs=1", *overrides), tmp_path / name)
        state = final_weights(tmp_path / name)
        return torch.cat([v.flatten().double() for v in state.values()])

    start = weights("start", "optimizer.lr=1e-30")  # a step this small leaves every float32 weight as it is
    free = weights("free", "optimizer.lr=1.0")
    clipped = weights("clipped", "optimizer.lr=1.0", "trainer.grad_clip_norm=0.05")
    assert torch.linalg.vector_norm(free - start) > 0.5  # unclipped: ten times the clip and more
    assert float(torch.linalg.vector_norm(clipped - start)) == pytest.approx(1.0 * 0.05, rel=1e-4)


def test_chance_level_warning(fake_data, tmp_path):
    summary = train(cfg_for(fake_data, "optimizer.lr=1e-6", "trainer.epochs=2", "trainer.chance_patience=2"), tmp_path)
    assert summary["status"] == "completed"
    assert any("chance level" in w for w in summary["warnings"])


def test_no_sys_exit_inside_a_job():
    """sys.exit inside a job would end a whole sweep: only the command-line entry points may call it."""
    package = REPO / "cnnbench"
    offenders = [p.name for p in package.rglob("*.py")
                 if "sys.exit(" in p.read_text()
                 and p.relative_to(package).as_posix() not in ("cli.py", "__main__.py", "book/pipeline.py")]
    assert offenders == []


# ------------------------------------------------------------------------------- validation (CLI)

BAD_VALUES = [
    # every device.* option is checked before a folder exists (speed.settings.check_device_options)
    (["device.compile=maybe"], "device.compile must be one of true, false, auto, got 'maybe'"),
    (["device.compile='True'"], "device.compile must be one of true, false, auto, got 'True'"),  # a string
    (["device.fused_optimizer=maybe"], "device.fused_optimizer must be one of true, false, auto, got 'maybe'"),
    (["device.channels_last=maybe"], "device.channels_last must be one of true, false, auto, got 'maybe'"),
    (["device.precision=fp8"], "device.precision must be one of fp32, bf16, fp16, auto, got 'fp8'"),
    (["device.fast_pooling=maybe"], "device.fast_pooling must be true or false, got maybe"),  # the schema's type
    (["device.fused_kernels=maybe"], "device.fused_kernels must be true or false, got maybe"),
    (["device.malloc_tuning=maybe"], "device.malloc_tuning must be true or false, got maybe"),
    (["device.cudnn_benchmark=maybe"], "device.cudnn_benchmark must be true or false, got maybe"),
    (["device.conv_weight_grad=nhwc"], "device.conv_weight_grad must be one of auto, native, got 'nhwc'"),
    (["device.num_threads=0"], "device.num_threads must be a positive integer, got 0"),
    (["device.num_threads=two"], "device.num_threads must be an integer, got two"),
    (["device.precision=fp16", "device.type=cpu"], "device.precision=fp16 needs CUDA"),
    (["model=resnt"], "Could not find 'model/resnt'. Available options in 'model': alexnet"),
    (["optimizer=sgdd"], "Could not find 'optimizer/sgdd'. Available options in 'optimizer': adam, adamw, sgd,"),
    (["dataset.resize=0"], "dataset.resize must be a positive integer, got 0"),
    (["dataset.resize=abc"], "dataset.resize must be an integer, got abc"),
    (["trainer.batch_size=-2"], "trainer.batch_size must be a positive integer, got -2"),
    (["trainer.epochs=0"], "trainer.epochs must be a positive integer, got 0"),
    (["trainer.epochs=1.5"], "trainer.epochs must be an integer, got 1.5"),
    (["optimizer.lr=-0.1"], "optimizer.lr must be a positive number, got -0.1"),
    (["optimizer.lr=fast"], "optimizer.lr must be a number, got fast"),
    (["optimizer=adam", "optimizer.momentum=0.9"], "Could not override 'optimizer.momentum': no such key; the chosen "
                                                   "optimizer option does not have it"),
    (["model=alexnet", "dataset.resize=28"], "alexnet cannot take 28x28 inputs: its layers shrink the image to "
                                             "nothing; the smallest size that works is 65"),
    (["trainer.batch_size=70000"], "trainer.batch_size=70000 is larger than the training set (60000 examples"),
    (["trainer.epoch=3"], "Could not override 'trainer.epoch': no such key; did you mean 'trainer.epochs'?"),
    (["+trainer.epocs=3"], "unknown config key 'trainer.epocs' (added with '+'): cnnbench does not read it; "
                           "did you mean 'trainer.epochs'?"),
    (["trainer.epochs=???"], "no value given for trainer.epochs"),
    (["-m", "model=lenet,alexnet", "dataset.resize=28"], "alexnet cannot take 28x28 inputs"),
    (["optimizer.lr=nan"], "optimizer.lr must be a finite number, got nan"),
    (["optimizer.lr=inf"], "optimizer.lr must be a finite number, got inf"),
    (["-m", "optimizer.lr=0.1,nan"], "optimizer.lr must be a finite number, got nan"),
    (["trainer.divergence_loss=-inf"], "trainer.divergence_loss must be a finite number, got -inf"),
    (["optimizer=sgd_momentum", "optimizer.momentum=1.0"], "optimizer.momentum must be a number in [0, 1), got 1.0"),
    (["optimizer.momentum=-0.1"], "optimizer.momentum must be a number in [0, 1), got -0.1"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "optimizer.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    (["optimizer=adamw", "optimizer.weight_decay=-0.01"], "optimizer.weight_decay must be a number >= 0, got -0.01"),
    (["optimizer.nesterov=true"], "optimizer.nesterov=true needs optimizer.momentum > 0"),
    (["scheduler=step", "scheduler.gamma=0"], "scheduler.gamma must be a positive number, got 0.0"),
    (["trainer.logs_per_epoch=-1"], "trainer.logs_per_epoch must be an integer >= 0, got -1"),
    (["trainer.label_smoothing=1.0"], "trainer.label_smoothing must be a number in [0, 1), got 1.0"),
    (["trainer.ema.decay=1.5"], "trainer.ema.decay must be a number in [0, 1), got 1.5"),
    (["augment=flip_crop", "augment.flip=2"], "augment.flip must be a number in [0, 1], got 2"),
    (["model=vgg11", "model.width_div=0"], "model.width_div must be a positive integer dividing 64 for vgg11, got 0"),
    (["model=vgg11", "model.width_div=3"], "model.width_div must be a positive integer dividing 64 for vgg11, got 3"),
    (["model=alexnet", "model.dropout=1.0"], "model.dropout must be a number in [0, 1) for alexnet, got 1.0"),
    (["model=lenet", "+model.lrn=true"], "model lenet takes no keyword argument 'lrn' (model.lrn); it "
                                         "takes activation, pooling, channels"),
    (["model=vgg11", "+model.widht_div=2"], "model vgg11 takes no keyword argument 'widht_div' (model.widht_div); it "
                                            "takes conv_arch, width_div, dropout"),
    (["model=resnet18", "dataset.resize=4096"], "a training step of resnet18 at batch size 256, 4096x4096 inputs, fp32 "
                                                "precision needs about "),
]


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_config_values_get_one_line_before_anything_runs(overrides, message, tmp_path, capsys):
    out_dir = tmp_path / "out"
    dir_override = "hydra.sweep.dir" if "-m" in overrides else "hydra.run.dir"
    assert main(["train", *overrides, f"{dir_override}={out_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cnnbench train: error: ") and message in err
    assert not out_dir.exists()  # refused before any run or sweep folder was created


def test_cuda_without_a_gpu_is_refused(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "device=cuda", f"hydra.run.dir={tmp_path / 'x'}"]) == 2
    assert "device=cuda was asked for but no CUDA device is available" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_output_folder_on_a_virtual_file_system_is_refused(capsys):
    """/proc passes a permission check for root, yet no folder can be made there: one line, exit 2."""
    assert main(["train", "hydra.run.dir=/proc/cnnbench-test/run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith("cnnbench train: error: cannot create the output folder /proc/cnnbench-test/run: /proc "
                          "does not accept new folders (")
    assert not Path("/proc/cnnbench-test").exists()


def test_unwritable_output_folder_is_refused(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", f"hydra.run.dir={blocker / 'run'}"]) == 2
    assert f"cannot create the output folder {blocker / 'run'}: {blocker} is a file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad data


def corrupt(root: Path, name: str, mutate) -> Path:
    path = root / "FashionMNIST" / "raw" / name
    path.write_bytes(mutate(path.read_bytes()))
    return path


@pytest.mark.parametrize("name,mutate,message", [
    ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated: 200620 bytes, expected 200720"),
    ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:], "wrong magic number 0x00000801"),
    ("train-images-idx3-ubyte", lambda b: b + b"\x00" * 10, "longer than its header says"),
    ("train-labels-idx1-ubyte", lambda b: b[:8] + bytes([42]) + b[9:], "1 labels outside 0..9"),
    ("train-labels-idx1-ubyte", lambda b: b[:5], "shorter than its 8-byte IDX header"),
])
def test_corrupt_files_are_reported_with_file_and_problem(tmp_path, name, mutate, message):
    root = write_fake_dataset(tmp_path, n_train=256, n_test=32)
    path = corrupt(root, name, mutate)
    with pytest.raises(DataError) as err:
        read_split(path.parent, "train", 10)
    assert str(path) in str(err.value) and message in str(err.value)


def test_image_and_label_counts_must_agree(tmp_path):
    root = write_fake_dataset(tmp_path, n_train=64, n_test=32)
    write_idx(root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte", (torch.arange(60) % 10).numpy())
    with pytest.raises(DataError, match="holds 64 images but .* holds 60 labels"):
        read_split(root / "FashionMNIST" / "raw", "train", 10)


def test_a_run_on_corrupt_data_fails_without_claiming_success(tmp_path):
    root = write_fake_dataset(tmp_path / "data", n_train=64, n_test=32)
    corrupt(root, "t10k-images-idx3-ubyte", lambda b: b[:1000])
    summary = train(cfg_for(root, "trainer.epochs=1"), tmp_path / "run")
    assert summary["status"] == "failed" and "truncated" in summary["error"]
    assert not (tmp_path / "run" / "last.pt").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------------------- determinism


def test_deterministic_runs_are_identical(fake_data, tmp_path):
    a = train(cfg_for(fake_data, "trainer.epochs=2", "model=lenet_bn", "trainer.seed=7"), tmp_path / "a")
    train(cfg_for(fake_data, "trainer.epochs=2", "model=lenet_bn", "trainer.seed=7"), tmp_path / "b")
    assert a["seed"] == 7 and a["deterministic"] is True
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"), atol=0)
    def strip(p: Path) -> list[dict]:  # the records without their timings
        return [{k: v for k, v in json.loads(line).items() if "throughput" not in k and "time" not in k}
                for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")
    c = train(cfg_for(fake_data, "trainer.epochs=2", "model=lenet_bn", "trainer.seed=8"), tmp_path / "c")
    assert c["train/loss"] != a["train/loss"]
