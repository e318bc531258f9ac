"""device.num_threads=auto: torch's thread count follows the cores other programs leave free (cnnbench.speed.load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cnnbench.speed import load
from cnnbench.speed.load import CpuSample, ThreadFollower, others_cores, thread_setting, threads_for
from tests.helpers import compose_fast, fast_overrides, stop_process


@pytest.mark.parametrize("free,most,expected", [
    (2.0, 2, 2), (1.8, 2, 2), (1.7, 2, 1), (1.33, 2, 1), (1.0, 2, 1), (0.2, 2, 1), (-3.0, 2, 1),  # never below 1
    # a spinner on one of 2 cores, measured while this run held both: it got half a core, 1.5 look free
    (1.5, 2, 1),
    (15.8, 16, 16), (15.6, 16, 15), (12.2, 16, 12), (40.0, 16, 16),  # never above the starting count
])
def test_threads_for_needs_all_but_a_quarter_core_free_per_thread(free, most, expected):
    assert threads_for(free, most) == expected


def test_others_are_the_busy_cores_minus_this_process():
    before, after = CpuSample(busy_s=100.0, own_s=10.0, wall_s=0.0), CpuSample(busy_s=103.0, own_s=11.0, wall_s=2.0)
    assert others_cores(before, after) == pytest.approx(1.0)  # 3 core-seconds busy, 1 of them ours, over 2 s
    assert others_cores(after, after) == 0.0
    assert others_cores(before, CpuSample(busy_s=100.5, own_s=12.0, wall_s=1.0)) == 0.0  # clock skew: never < 0


def test_the_kernels_counts_are_read():
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat (not Linux)")
    a = load.cpu_sample()
    sum(i * i for i in range(300_000))  # this process busy for a moment
    b = load.cpu_sample()
    assert b.busy_s >= a.busy_s and b.own_s > a.own_s and b.wall_s > a.wall_s


@pytest.mark.skipif(load.resource is None, reason="no getrusage (not Unix)")
def test_a_finished_child_process_is_this_process_own_work():
    """A compiler or git run by this process is not another program: its CPU time counts as this process's."""
    before = load.cpu_sample()
    child = subprocess.run([sys.executable, "-c", "import time; sum(i * i for i in range(3_000_000)); "
                            "print(time.process_time())"], check=True, capture_output=True, text=True)
    after = load.cpu_sample()
    assert after.own_s - before.own_s >= 0.9 * float(child.stdout) > 0.05


def test_the_command_start_is_the_first_window_once():
    """The console script's reading starts the first run's window; a second run in the process reads afresh."""
    load.note_command_start()
    noted = load._command_start
    assert noted is not None and noted.taken_at == "command start" and load.start_window() is noted
    assert load.start_window() is not noted and load._command_start is None


def test_a_command_reads_the_load_from_its_start(fake_data, tmp_path):
    """`cnnbench train` with auto threads: the first count comes from a window spanning the command's start-up
    (imports, Hydra, set-up: over half a second), not the run's set-up alone (about a tenth); the summary says."""
    out = subprocess.run([sys.executable, "-m", "cnnbench", "train",
                          *fast_overrides(fake_data, "model=lenet", "device.num_threads=auto", "trainer.epochs=1",
                                          "trainer.limit_train_batches=2", f"hydra.run.dir={tmp_path / 'run'}")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    threads = json.loads((tmp_path / "run" / "summary.json").read_text())["threads"]
    if threads is None or len(load.usable_cpu_ids()) < 2:
        pytest.skip("one usable core: the count does not follow")
    assert threads["first_window"]["from"] == "command start", threads
    assert threads["first_window"]["seconds"] > 0.5, threads


class FakeMachine:
    """Readings as a machine with ``cores`` cores would give them: ``others`` cores busy with other programs
    and this process using ``own`` cores, one reading per ``interval`` seconds of a fake clock."""

    def __init__(self, monkeypatch, cores: int = 2) -> None:
        self.clock, self.busy, self.own, self.others = 0.0, 0.0, 0.0, 0.0
        self.cores = cores
        monkeypatch.setattr(load.time, "perf_counter", lambda: self.clock)
        monkeypatch.setattr(load, "cpu_sample", lambda cpus=None: CpuSample(self.busy, self.own, self.clock))
        monkeypatch.setattr(torch, "set_num_threads", self.set_threads)
        self.threads: list[int] = []

    def set_threads(self, n: int) -> None:
        self.threads.append(n)

    def advance(self, seconds: float, others: float) -> None:
        own = min(self.threads[-1] if self.threads else 1, self.cores)
        self.clock += seconds
        self.own += own * seconds
        self.busy += (own + others) * seconds


def test_the_follower_drops_at_once_and_rises_after_two_windows(monkeypatch):
    machine = FakeMachine(monkeypatch)
    since = load.cpu_sample()
    machine.advance(1.0, others=0.0)  # a quiet start-up
    follower = ThreadFollower(most=2, cores=2)
    assert follower.start(since) == 2
    follower.tick()  # before a second has gone: nothing read
    assert machine.threads == [2]
    for _ in range(3):  # another program takes a core (it gets 0.7 of one while this run holds both)
        machine.advance(1.0, others=0.7)
        follower.tick()
    assert machine.threads == [2, 1]  # one window is enough to drop
    machine.advance(1.0, others=0.0)  # the other program pauses for a second: no flapping
    follower.tick()
    machine.advance(1.0, others=1.0)
    follower.tick()
    assert machine.threads == [2, 1]
    for _ in range(2):  # it has ended: two quiet windows, then both cores again
        machine.advance(1.0, others=0.0)
        follower.tick()
    assert machine.threads == [2, 1, 2]
    record = follower.record()
    assert record["changes"] == 2 and record["most"] == 2 and set(record["seconds_at"]) == {"1", "2"}
    assert sum(record["seconds_at"].values()) == pytest.approx(7.0, abs=0.2)  # from the start on


def test_the_first_count_comes_from_the_start_up_window(monkeypatch):
    machine = FakeMachine(monkeypatch, cores=4)
    since = load.cpu_sample()
    machine.advance(1.5, others=2.9)  # three other programs hold cores through the start-up
    follower = ThreadFollower(most=4, cores=4)
    assert follower.start(since) == 1
    assert follower.record()["first_window"] == {"seconds": 1.5, "others_cores": pytest.approx(2.9),
                                                 "from": "run set-up"}
    assert ThreadFollower(most=4, cores=4).start(None) == 4  # nothing to read: torch's count


@pytest.mark.parametrize("value,expected", [("auto", "auto"), (None, None), (3, 3)])
def test_the_setting_is_auto_null_or_a_count(value, expected):
    assert thread_setting(value) == expected


@pytest.fixture(autouse=True)
def all_cores():
    """Each test starts from torch's default count (one per usable core), whatever a test before it left."""
    before = torch.get_num_threads()
    torch.set_num_threads(len(load.usable_cpu_ids()))
    yield
    torch.set_num_threads(before)


def busy_everywhere_but_one(monkeypatch) -> None:
    """Readings that say other programs hold all usable cores but one (whatever this process does)."""
    real = load.cpu_sample
    start = real()

    def sample(cpus=None):
        now = real(cpus)
        others = (len(load.usable_cpu_ids()) - 1) * (now.wall_s - start.wall_s)
        return CpuSample(now.own_s + others, now.own_s, now.wall_s)

    monkeypatch.setattr(load, "cpu_sample", sample)


@pytest.mark.skipif(not os.path.exists("/proc/stat") or len(load.usable_cpu_ids()) < 2, reason="needs 2 cores, Linux")
def test_a_run_follows_the_load_and_says_so(fake_data, tmp_path, monkeypatch, caplog):
    """auto on a machine whose other cores are busy: one thread from the first step, in the header and the summary;
    the caller's own count is given back."""
    from cnnbench.run.train import train

    busy_everywhere_but_one(monkeypatch)
    before = torch.get_num_threads()
    caplog.set_level("INFO")
    summary = train(compose_fast(fake_data, "model=lenet", "device.num_threads=auto", "trainer.epochs=1",
                                 "trainer.limit_train_batches=3"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["machine"]["torch_threads"] == 1
    assert summary["threads"]["policy"] == "follow" and summary["threads"]["most"] == before
    assert "1 thread (follows the load: 1 of" in caplog.text
    assert torch.get_num_threads() == before


@pytest.mark.skipif(len(load.usable_cpu_ids()) < 2, reason="needs 2 cores")
def test_the_count_follows_during_the_run(fake_data, tmp_path, monkeypatch):
    """Quiet at the start, then another program takes all cores but one: the steps after it run with one thread."""
    from cnnbench.run.train import train

    real, state = load.cpu_sample, {"busy_from": None, "reads": 0}

    def sample(cpus=None):  # a quiet start-up (the first two readings), then others on every core but one
        now = real(cpus)
        state["reads"] += 1
        if state["reads"] <= 2:
            state["busy_from"] = now.wall_s
            return CpuSample(now.own_s, now.own_s, now.wall_s)
        others = (len(load.usable_cpu_ids()) - 1) * (now.wall_s - state["busy_from"])
        return CpuSample(now.own_s + others, now.own_s, now.wall_s)

    monkeypatch.setattr(load, "cpu_sample", sample)
    monkeypatch.setattr(load, "INTERVAL_S", 0.0)  # a reading after every step
    summary = train(compose_fast(fake_data, "model=lenet", "device.num_threads=auto", "trainer.epochs=1",
                                 "trainer.limit_train_batches=4"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["threads"]["changes"] >= 1 and "1" in summary["threads"]["seconds_at"], summary["threads"]


@pytest.mark.parametrize("extra", [["device.num_threads=2"], ["device.num_threads=auto", "trainer.deterministic=true"],
                                   ["device.num_threads=null"]])
def test_a_fixed_count_does_not_follow(fake_data, tmp_path, monkeypatch, extra):
    """A number, a deterministic run (the same numbers whatever the load) and null keep their count."""
    from cnnbench.run.train import train

    busy_everywhere_but_one(monkeypatch)
    summary = train(compose_fast(fake_data, "model=lenet", "trainer.epochs=1", "trainer.limit_train_batches=2",
                                 *extra), tmp_path / "run")
    assert summary["status"] == "completed" and summary["threads"] is None
    assert summary["machine"]["torch_threads"] == (2 if "device.num_threads=2" in extra else torch.get_num_threads())


def test_auto_is_what_users_get():
    from cnnbench.config import compose_config

    for device in ("auto", "cpu", "fast"):
        assert compose_config([f"device={device}"]).device.num_threads == "auto"


BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/stat") or len(load.usable_cpu_ids()) != 2, reason="a 2-core machine")
def test_a_busy_core_found_by_a_real_run(fake_data, tmp_path):
    """The real kernel readings: with another program spinning on one of 2 cores, the command trains with 1 thread."""
    spinner = subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=120)], start_new_session=True)
    try:
        out = subprocess.run([sys.executable, "-m", "cnnbench", "train",
                              *fast_overrides(fake_data, "model=lenet", "device.num_threads=auto", "trainer.epochs=1",
                                              f"hydra.run.dir={tmp_path / 'run'}")],
                             capture_output=True, text=True, timeout=300)
    finally:
        stop_process(spinner)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["machine"]["torch_threads"] == 1, summary["threads"]
    assert "1 thread (follows the load: 1 of 2 cores free)" in out.stdout + out.stderr
