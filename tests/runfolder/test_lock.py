"""Run-folder integrity: one writer per folder, resumes that cannot mix two runs, full disks, out of memory."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from cnnbench.cli import main
from cnnbench.config import compose_config
from cnnbench.errors import ResumeRefused
from cnnbench.run.memory import estimate_step_memory
from cnnbench.run.train import train
from cnnbench.runfolder import lock as runlock
from cnnbench.runfolder.lock import holder_of, run_folder_lock
from tests.helpers import (
    HeldStep,
    assert_same_weights,
    cfg_for,
    cli,
    fast_overrides,
    final_weights,
    stop_process,
)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------- one writer


def test_the_lock_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    child = [sys.executable, "-c", "import sys\nfrom cnnbench.runfolder.lock import acquire\nfrom pathlib import Path\n"
             "try:\n    acquire(Path(sys.argv[1]))\nexcept Exception as e:\n    print(e)\n    sys.exit(2)\n",
             str(tmp_path)]
    with run_folder_lock(tmp_path):
        with run_folder_lock(tmp_path):  # train() inside cnnbench train's lock: no waiting on itself
            pass
        refused = subprocess.run(child, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and f"in use by process {os.getpid()}" in refused.stdout
    assert subprocess.run(child, capture_output=True, text=True, timeout=60).returncode == 0


def test_the_train_command_imports_without_fcntl():
    """Windows has no fcntl: the modules ``cnnbench train`` loads import without it (simulated: ``import
    fcntl`` fails). The child prints the ImportError in one line, no traceback: a failed promise, not a crash."""
    code = ("import sys\nsys.modules['fcntl'] = None\n"
            "try:\n    import cnnbench.cli, cnnbench.commands.launch, cnnbench.commands.sweeps\n"
            "    import cnnbench.run.train, cnnbench.runfolder.lock\n"
            "except ImportError as e:\n    print('cannot import:', e)\nelse:\n    print('imported')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "imported"


# Windows simulated on this machine: msvcrt.locking over POSIX record locks (fcntl.lockf) of the same bytes,
# refused with EACCES as Windows' C runtime refuses; Windows locks are mandatory, so a read of bytes that
# another process locked fails (ReadFile's lock violation); fcntl itself is unimportable for cnnbench.
SIMULATED_WINDOWS = """
import errno, os, stat, sys, time, types
from pathlib import Path
import fcntl as posix
sys.modules["fcntl"] = None

def locking(fd, mode, nbytes):
    start = os.lseek(fd, 0, os.SEEK_CUR)
    if mode == 0:  # LK_UNLCK
        posix.lockf(fd, posix.LOCK_UN, nbytes, start)
        return
    kind = posix.LOCK_SH if posix.fcntl(fd, posix.F_GETFL) & os.O_ACCMODE == os.O_RDONLY else posix.LOCK_EX
    try:
        posix.lockf(fd, kind | posix.LOCK_NB, nbytes, start)
    except OSError:
        raise OSError(errno.EACCES, "Permission denied") from None

def read(fd, n, real_read=os.read):
    if stat.S_ISREG(os.fstat(fd).st_mode):
        start = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            posix.lockf(fd, posix.LOCK_SH | posix.LOCK_NB, n, start)
        except OSError:
            raise PermissionError(errno.EACCES, "locked by another process") from None
        posix.lockf(fd, posix.LOCK_UN, n, start)
    return real_read(fd, n)

os.read = read
sys.modules["msvcrt"] = types.SimpleNamespace(LK_UNLCK=0, LK_NBLCK=2, locking=locking)
from cnnbench.runfolder import lock as runlock
from cnnbench.errors import RunFolderInUse
runlock._WINDOWS = True
folder = Path(sys.argv[1])
"""


def test_the_windows_lock_refuses_another_process_and_names_it(tmp_path):
    """Through the msvcrt code path (simulated, above): a second process is refused with the holder's pid,
    read past the holder's mandatory lock, and sees it in holder_of; a killed holder leaves no lock."""
    child = SIMULATED_WINDOWS + ("try:\n    runlock.acquire(folder)\nexcept RunFolderInUse as e:\n    print(e)\n"
                                 "    print(runlock.holder_of(folder))\nelse:\n    print('taken')\n")
    holder = subprocess.Popen([sys.executable, "-c", SIMULATED_WINDOWS + "runlock.acquire(folder)\n"
                               "print('held', flush=True)\ntime.sleep(600)\n", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True,
                                 timeout=60)
        lines = refused.stdout.splitlines()
        assert len(lines) == 2, refused.stdout
        assert lines[0].startswith(f"run folder {tmp_path} is in use by process {holder.pid} on host ")
        assert lines[1].startswith(f"process {holder.pid} on host ")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        stop_process(holder)
    taken = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert taken.stdout.strip() == "taken"


def test_the_windows_lock_leaves_the_note_readable_and_is_unlocked_before_closing(monkeypatch, tmp_path):
    """msvcrt locks from the file position: the locked byte lies past the note; release unlocks it (Windows
    frees a closed file's locks only when "system resources allow")."""
    calls = []

    def locking(fd: int, mode: int, nbytes: int) -> None:
        calls.append((mode, os.lseek(fd, 0, os.SEEK_CUR), nbytes))

    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(LK_UNLCK=0, LK_NBLCK=2, locking=locking))
    monkeypatch.setattr(runlock, "_WINDOWS", True)
    with run_folder_lock(tmp_path):
        note = (tmp_path / ".lock").read_bytes()
        assert json.loads(note)["pid"] == os.getpid()
        assert calls == [(2, runlock.WINDOWS_LOCK_OFFSET, 1)]
        assert runlock.WINDOWS_LOCK_OFFSET >= runlock.NOTE_BYTES > len(note)
    assert calls[1:] == [(0, runlock.WINDOWS_LOCK_OFFSET, 1)]


@pytest.mark.slow  # two commands (~8 s); one process's lock is in the fast suite
def test_second_process_on_a_run_folder_is_refused(fake_data, tmp_path):
    """Two `cnnbench train` on one folder: the second stops with one line naming the holder, exit 2,
    touching nothing; the first goes on and its files stay one run's. The first holds inside a step of
    its second epoch (HeldStep) while the second starts, so it is surely still running then."""
    run_dir = tmp_path / "run"
    overrides = fast_overrides(fake_data, "trainer.batch_size=16", "trainer.epochs=200", f"hydra.run.dir={run_dir}")
    args = cli("train", *overrides)
    held = HeldStep(tmp_path / "gate", run_dir / "metrics.jsonl", '"kind": "epoch"')
    first = subprocess.Popen(held.argv("train", *overrides), env=held.env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        held.wait_held(first)
        assert (run_dir / "last.pt").exists()  # the first epoch's checkpoint
        hydra_before = snapshot(run_dir / ".hydra")
        names = lambda: {p.name for p in run_dir.iterdir() if not p.name.endswith(".tmp")}  # noqa: E731
        names_before = names()
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        err = second.stderr.strip()
        assert err.splitlines() == [err]
        assert err.startswith(f"cnnbench train: error: run folder {run_dir} is in use by process {first.pid} on host ")
        assert snapshot(run_dir / ".hydra") == hydra_before and names() == names_before
        first.send_signal(signal.SIGTERM)
        held.release()
        out, _ = first.communicate(timeout=120)
    finally:
        stop_process(first)
    assert first.returncode == 130, out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # one run's steps: no second run interleaved
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == summary["steps"] >= steps[-1]


@pytest.mark.slow  # two processes (~5 s)
def test_a_killed_holder_leaves_no_lock(fake_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = fast_overrides(fake_data, "trainer.batch_size=16", "trainer.epochs=200", "trainer.deterministic=true")
    held = HeldStep(tmp_path / "gate", run_dir / "metrics.jsonl", '"kind": "epoch"')  # never released: killed
    holder = subprocess.Popen(held.argv("train", *overrides, f"hydra.run.dir={run_dir}"), env=held.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        held.wait_held(holder)  # inside its second epoch: running, holding the lock
        assert holder_of(run_dir).startswith(f"process {holder.pid} on host ")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        stop_process(holder)
    assert holder_of(run_dir) is None  # the kernel dropped the lock with the process
    resumed = [o for o in overrides if not o.startswith("trainer.epochs=")]
    resumed += ["trainer.epochs=2", "trainer.resume=auto"]
    assert train(compose_config(resumed), run_dir)["status"] == "completed"


@pytest.mark.slow  # two processes (~5 s)
def test_a_sweep_reports_a_job_folder_in_use_and_leaves_it_alone(fake_data, tmp_path):
    sweep_dir = tmp_path / "sweep"
    busy = sweep_dir / "0_optimizer.lr=0.5"
    (busy / ".hydra").mkdir(parents=True)
    (busy / ".hydra" / "config.yaml").write_text("the other run's config\n")
    (busy / "summary.json").write_text('{"status": "running"}\n')
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from cnnbench.runfolder.lock import acquire\nacquire(Path(sys.argv[1]))\n"
                               "print('held', flush=True)\ntime.sleep(600)\n", str(busy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(busy)
        overrides = fast_overrides(fake_data, "trainer.batch_size=64", "trainer.epochs=1")
        proc = subprocess.run(cli("train", "-m", *overrides, "optimizer.lr=0.5,0.9", f"hydra.sweep.dir={sweep_dir}"),
                              capture_output=True, text=True, timeout=600)
    finally:
        stop_process(holder)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    assert "1 of 2 jobs completed" in log
    assert (f"job did not complete: {busy}: in use: RunFolderInUse: run folder {busy} is in use by process "
            f"{holder.pid}") in log
    after = snapshot(busy)
    assert {k: v for k, v in after.items() if k != "train.log"} == before  # Hydra only appends to its log
    assert json.loads((sweep_dir / "1_optimizer.lr=0.9" / "summary.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def one_epoch(fake_data, tmp_path_factory) -> Path:
    """A finished 1-epoch run (momentum SGD, step schedule) to resume from."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    assert train(cfg_for(fake_data, *BASE, "trainer.epochs=1"), run_dir)["status"] == "completed"
    return run_dir


BASE = ["optimizer=sgd_momentum", "optimizer.lr=0.05", "scheduler=step", "scheduler.step_epochs=1"]


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


# ------------------------------------------------------------------------------------- full disk


class FullDisk:
    """Writes to files whose name contains ``target`` fail with ENOSPC once ``after`` checkpoints were written
    (every file opened for writing through ``open``/``io.open``, as pathlib, torch.save's file object and
    TensorBoard's writer do)."""

    def __init__(self, monkeypatch, target: str, after: int) -> None:
        self.target, self.after, self.checkpoints, self.on = target, after, 0, True
        real_open = io.open

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if not isinstance(file, (str, bytes, os.PathLike)) or not set(mode) & set("wax+"):
                return handle
            return _DiskFile(handle, os.path.basename(os.fsdecode(file)), self)

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)

    def full_for(self, name: str) -> bool:
        return self.on and self.checkpoints >= self.after and self.target in name


class _DiskFile:
    def __init__(self, handle, name: str, disk: FullDisk) -> None:
        self._handle, self._name, self._disk = handle, name, disk

    def write(self, data):
        if self._disk.full_for(self._name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def close(self) -> None:
        self._handle.close()
        if self._name.startswith(".last.pt."):
            self._disk.checkpoints += 1

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread
@pytest.mark.parametrize("target,failed_file,epochs_kept", [
    ("last.pt", "last.pt", 2),
    ("metrics.jsonl", "metrics.jsonl", 2),
    ("events.out.tfevents", "events.out.tfevents.", 2),
    ("summary.json", "summary.json", 3),
])
def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(fake_data, tmp_path, monkeypatch, caplog,
                                                                   target, failed_file, epochs_kept):
    overrides = ["trainer.epochs=3", "trainer.logs_per_epoch=2"]
    FullDisk(monkeypatch, target, after=2)
    summary = train(cfg_for(fake_data, *overrides), tmp_path)
    assert summary["status"] == "failed"
    assert f"cannot write {tmp_path / failed_file}" in summary["error"]
    assert "No space left on device (errno 28)" in summary["error"]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == epochs_kept
    assert summary["resumable_from_epoch"] == epochs_kept
    assert summary["resume_command"].endswith(f"trainer.resume=auto hydra.run.dir={tmp_path}")
    assert f"continue it ({epochs_kept} epochs done) once the disk has room with: cnnbench train" in caplog.text
    assert (f"run failed: RunFileWriteError: cannot write {tmp_path / failed_file}" in caplog.text
            or target == "summary.json")
    assert "Traceback" not in caplog.text  # one line, not a chained traceback
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_run_stopped_by_a_full_disk_resumes_to_the_same_weights(fake_data, tmp_path, monkeypatch):
    overrides = ["trainer.epochs=3", "model=lenet_bn", *BASE]
    disk = FullDisk(monkeypatch, "last.pt", after=2)
    assert train(cfg_for(fake_data, *overrides), tmp_path / "full")["status"] == "failed"
    disk.on = False  # space is back
    resumed = train(cfg_for(fake_data, *overrides, "trainer.resume=auto"), tmp_path / "full")
    assert resumed["status"] == "completed" and resumed["resumes"][0]["from_epoch"] == 2
    train(cfg_for(fake_data, *overrides), tmp_path / "straight")
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "straight"))


def test_low_free_space_is_warned_about_early(fake_data, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**12, 10**12, 10_000))
    summary = train(cfg_for(fake_data, "trainer.epochs=1"), tmp_path)
    assert summary["status"] == "completed"
    assert any("10kB free on the disk of" in w and "less than 3 checkpoints" in w for w in summary["warnings"])


# ------------------------------------------------------------------------------------- out of memory


def test_a_step_that_cannot_fit_is_refused_before_training(fake_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("cnnbench.run.memory._cpu_available", lambda: (600 * 2**20, "available RAM"))
    overrides = fast_overrides(fake_data, "model=resnet18", "trainer.batch_size=256")
    assert main(["train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and not (tmp_path / "run").exists()
    assert err.startswith("cnnbench train: error: a training step of resnet18 at batch size 256, 96x96 inputs, fp32 "
                          "precision needs about 1.3")
    suggested = int(err.split("try trainer.batch_size=")[1].split()[0])
    cfg = compose_config(overrides)
    assert 8 <= suggested < 256 and estimate_step_memory(cfg).total(suggested) <= 600 * 2**20
    summary = train(cfg, tmp_path / "direct")  # train() itself refuses too, before any step
    assert summary["status"] == "failed" and summary["steps"] == 0 and "NotEnoughMemory" in summary["error"]


def test_out_of_memory_during_training_fails_with_one_line(fake_data, tmp_path, monkeypatch):
    """A real allocator failure (256 TiB asked of the CPU allocator) at the third training step."""
    import cnnbench.run.build as build

    real = build.model_from_config
    steps = []

    def with_huge_step(cfg):
        model = real(cfg)

        def hook(module, _inputs):
            if module.training:
                steps.append(1)
                if len(steps) == 3:
                    torch.empty(1 << 48, dtype=torch.uint8)

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(build, "model_from_config", with_huge_step)
    summary = train(cfg_for(fake_data, "trainer.epochs=1"), tmp_path)
    assert summary["status"] == "failed" and len(steps) == 3 and summary["epochs_completed"] == 0
    assert summary["error"] == (
        "NotEnoughMemory: out of memory with lenet at batch size 32, 28x28 inputs, fp32 precision (can't allocate "
        "memory: you tried to allocate 281474976710656 bytes); the largest batch that fits is about 16: try "
        "trainer.batch_size=16 (or a smaller dataset.resize)")


# ---------------------------------------------------------------------------------------- model arguments


def test_every_declared_model_argument_is_taken_by_its_factory():
    from cnnbench.models import build_model, get_model_spec, list_models

    for name in list_models():
        spec = get_model_spec(name)
        with torch.device("meta"):
            build_model(name, **{k: v.example for k, v in spec.kwargs.items()})
        for key, value in compose_config([f"model={name}"]).model.items():
            assert key == "name" or spec.kwargs[key].valid(value), (name, key, value)


def test_a_run_folder_with_spaces_or_commas_reaches_hydra_quoted():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnbench.commands.launch import override_value

    for path in ("outputs/2026-01-01/10-00-00-000001_lenet", "/tmp/my runs/a,b", "/tmp/it's [1]"):
        (parsed,) = OverridesParser.create().parse_overrides([f"hydra.run.dir={override_value(path)}"])
        assert parsed.value() == path


@pytest.mark.parametrize("model", ["lenet_bn", "resnet18"])
def test_the_memory_estimate_is_the_same_on_the_cpu_and_the_meta_device_and_draws_no_random_numbers(
        fake_data, monkeypatch, model):
    """Small networks run the estimate's one image on the CPU (the meta device's first forward costs a
    second of imports): same bytes as on the meta device, and the run's random generator untouched."""
    cfg = cfg_for(fake_data, f"model={model}")
    torch.manual_seed(0)
    on_cpu = estimate_step_memory(cfg)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)  # nothing drawn by the estimate
    monkeypatch.setattr("cnnbench.run.memory.REAL_FORWARD_MAX_BYTES", 0)  # every network on the meta device
    assert estimate_step_memory(cfg) == on_cpu
