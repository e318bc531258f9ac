"""Threads that follow the machine: as many torch threads as there are cores other programs leave free.

PyTorch's CPU kernels split each operation over a fixed team of threads and wait at its end for the slowest.
When another program holds one of the cores, the thread that shares that core runs in scheduler time slices
(milliseconds) while its partner waits, so every kernel of a small network waits a slice. Measured on a
2-core Xeon (2026-12-07, LeNet-BN, the book's recipe, a 1-thread training on the other core): 2 threads
trained 6,339 images/s, 1 thread 27,677. Two such runs at once (a joblib sweep of 2 jobs on 2 cores) fall the
same way. One thread fewer than the free cores costs a run alone half its speed, so the count cannot be fixed.

:class:`ThreadFollower` measures, over windows of about a second, the CPU time the usable cores spent busy
(``/proc/stat``) minus this process's own (``time.process_time``, all its threads): what other programs
used, in cores. It runs n threads where at least n - SLACK cores are free (:func:`threads_for`), at least 1
and at most the count it started with (torch's default: the usable cores), fewer at once when others take a
core, more again only after two windows agree (a program that pauses for a moment does not flap the count).
It is called between training steps: one clock read per step, a file read per second, no device wait.
``torch.set_num_threads`` between steps is cheap (the next parallel region forms the smaller team).

The count changes the rounding, not the method: ATen's reductions and a few oneDNN kernels sum in per-thread
pieces, so a step at 1 thread and at 2 threads differ in the last bits (measured: LeNet-BN's BatchNorm1d
forward and LeNet's first convolution's weight gradient; 40 steps apart, test accuracy 0.6531 against 0.6529).
A run that must give the same numbers whatever the load fixes the count: ``device.num_threads=N``, or
``trainer.deterministic=true`` (which keeps the starting count). summary.json records the counts used.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field

from ..errors import ConfigError

try:
    import resource  # Unix: the CPU time of this process's finished children
except ImportError:  # pragma: no cover - Windows
    resource = None

logger = logging.getLogger(__name__)

INTERVAL_S = 1.0  # seconds between two readings of the machine's load
SLACK = 0.25  # of a core: n threads need n - SLACK free cores (others' stray work, kernel threads)
RAISE_AFTER = 2  # windows in a row that must leave more cores free before the count goes up
# /proc/stat's per-CPU fields, in order: user nice system idle iowait irq softirq steal (guest is inside user)
IDLE_FIELDS = (3, 4)  # idle, iowait: the core was free
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class CpuSample:
    """One reading: CPU seconds the usable cores spent busy (every program), this process's CPU seconds
    (all its threads, and its children that have ended: a compiler building the fused kernels, git), and the
    wall clock, all in seconds."""

    busy_s: float
    own_s: float
    wall_s: float
    taken_at: str = ""  # "command start" for the console script's first reading (note_command_start)


FOLLOW = "auto"  # device.num_threads's value that follows the load


def thread_setting(value: object) -> int | str | None:
    """``device.num_threads`` read: "auto" (:data:`FOLLOW`), None (torch's default, fixed) or a count >= 1;
    anything else refused with one line."""
    if value is None or value == FOLLOW:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"device.num_threads must be auto, null or a positive integer, got {value!r}")
    if value < 1:
        raise ConfigError(f"device.num_threads must be auto, null or a positive integer, got {value}")
    return value


def usable_cpu_ids() -> set[int]:
    """The processors this process may run on (its affinity mask; all of them where the OS has none)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def cpu_sample(cpus: set[int] | None = None) -> CpuSample | None:
    """Read ``/proc/stat`` for ``cpus`` (default: the usable ones); None where there is no such file."""
    cpus = usable_cpu_ids() if cpus is None else cpus
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in rest.split()]
            ticks += sum(values[i] for i in BUSY_FIELDS if i < len(values))
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return CpuSample(busy_s=ticks / hz, own_s=time.process_time() + _children_s(), wall_s=time.perf_counter())


def _children_s() -> float:
    """CPU seconds of this process's children that have ended (0 where the OS does not say)."""
    if resource is None:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# The reading the console script took as a `cnnbench train` command began (note_command_start), until the
# command's first run takes it: process-wide, as the command itself is.
_command_start: CpuSample | None = None


def note_command_start() -> None:
    """Read the load as the command begins, before torch is imported: its run's first window then spans the
    whole start-up (1.3-1.7 s measured for LeNet commands) rather than only the run's own set-up (0.13 s
    measured), where a moment of another program's work weighs ten times as much."""
    global _command_start
    sample = cpu_sample()
    _command_start = None if sample is None else dataclasses.replace(sample, taken_at="command start")


def start_window() -> CpuSample | None:
    """Where a run's first window starts: the command's reading, taken once (the first run of the process),
    else now (a later run in the same process, a program calling :func:`cnnbench.run.train.train`)."""
    global _command_start
    noted, _command_start = _command_start, None
    return noted or cpu_sample()


def others_cores(before: CpuSample, after: CpuSample) -> float:
    """Cores other programs kept busy between two readings (0 when the window is empty)."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return 0.0
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, others / wall)


def threads_for(free_cores: float, most: int) -> int:
    """The thread count for ``free_cores`` left by others: the largest n with at least n - SLACK free, between 1
    and ``most``. Biased down because others' use is measured while this run competes with them: a program
    spinning on one of 2 cores gets part of it while this run holds both (0.5 or less where a fresh-clone CI
    run kept 2 threads beside one, its summary says), so 1.3-1.5 cores look free; one thread too many costs a
    small network most of its speed, one too few at most half."""
    return max(1, min(most, math.floor(free_cores + SLACK)))


@dataclass
class ThreadFollower:
    """Sets torch's thread count from the load other programs put on the usable cores; :meth:`tick` between
    steps. ``most``: the most threads (the count the run started with)."""

    most: int
    cores: int = field(default_factory=lambda: len(usable_cpu_ids()))
    interval_s: float = INTERVAL_S
    threads: int = 0  # the count in force (0: not started)
    changes: int = 0
    seconds_at: dict[int, float] = field(default_factory=dict)  # wall seconds spent at each count
    last: CpuSample | None = None
    next_s: float = 0.0
    pending_raise: int = 0  # windows in a row that asked for more threads
    since_s: float = 0.0  # when the count in force was set
    first_window: dict | None = None  # the start-up window the first count came from: seconds, others' cores, from

    def start(self, since: CpuSample | None) -> int:
        """Choose the first count from the load since ``since`` (:func:`start_window`: the command's start, so
        the start-up itself is the first window), set it, and return it."""
        now = cpu_sample()
        first = self.most
        if since is not None and now is not None:
            others = others_cores(since, now)
            self.first_window = {"seconds": round(now.wall_s - since.wall_s, 3), "others_cores": round(others, 3),
                                 "from": since.taken_at or "run set-up"}
            first = threads_for(self.cores - others, self.most)
        self.last, self.since_s = now, time.perf_counter()
        self.next_s = self.since_s + self.interval_s
        self._set(first)
        return first

    def tick(self) -> None:
        """After a step: every ``interval_s`` seconds, read the load and follow it."""
        if time.perf_counter() < self.next_s:
            return
        now = cpu_sample()
        if now is None or self.last is None:
            self.next_s = math.inf  # nothing to read on this OS: keep the count
            return
        wanted = threads_for(self.cores - others_cores(self.last, now), self.most)
        self.last, self.next_s = now, now.wall_s + self.interval_s
        if wanted < self.threads:
            self._set(wanted)
        elif wanted > self.threads:
            self.pending_raise += 1
            if self.pending_raise >= RAISE_AFTER:
                self._set(wanted)
        else:
            self.pending_raise = 0

    def _set(self, threads: int) -> None:
        now = time.perf_counter()
        if self.threads:
            self.seconds_at[self.threads] = self.seconds_at.get(self.threads, 0.0) + now - self.since_s
            self.changes += 1
            logger.debug("threads: %d -> %d (other programs hold cores)", self.threads, threads)
        self.threads, self.since_s, self.pending_raise = threads, now, 0
        import torch  # here, not above: the console script reads the load before torch is imported

        torch.set_num_threads(threads)

    def record(self) -> dict:
        """summary.json's ``threads``: the policy, the count at the start and now, changes, seconds at each, and
        the start-up window the first count was read from."""
        seconds = dict(self.seconds_at)
        if self.threads:
            seconds[self.threads] = seconds.get(self.threads, 0.0) + time.perf_counter() - self.since_s
        return {"policy": "follow", "most": self.most, "changes": self.changes,
                "seconds_at": {str(k): round(v, 1) for k, v in sorted(seconds.items())},
                "first_window": self.first_window}
