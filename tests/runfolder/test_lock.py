"""One writer per run folder (:mod:`cnnbench.runfolder.lock`): reentrant in a process, refusing another and naming
it, on Windows too (simulated), gone with a killed holder, and a sweep's job folder in use left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types

import pytest
import torch

from cnnbench.config import compose_config
from cnnbench.run.train import train
from cnnbench.runfolder import lock as runlock
from cnnbench.runfolder.lock import holder_of, run_folder_lock
from tests.helpers import HeldStep, cli, fast_overrides, snapshot, stop_process

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
