"""OpenMP threads that sleep when idle, on a busy machine only: decided before torch starts.

PyTorch's CPU kernels run on an OpenMP team (GNU libgomp in the PyPI wheels). By default a thread that
finishes its share of a parallel loop spins, waiting for the next loop, for up to about 300,000
iterations before it sleeps. Measured on a 2-core machine (LeNet-BN, 3 epochs of the book's recipe):

* quiet machine: the default spin trains 18,000-19,000 images/s; ``OMP_WAIT_POLICY=PASSIVE`` (sleep at
  once) 10,600-11,500 images/s, 40% slower, because every small kernel pays a thread wake-up;
* busy machine (load 10 on 2 cores): the spinning thread holds a core while the thread it waits for is
  descheduled, and each barrier costs a scheduler time slice: a LeNet step took 0.57-0.87 s with the
  default and 0.07 s with ``PASSIVE``.

So :func:`choose_omp_wait` sets ``PASSIVE`` only when the machine is busy at the command's start (other
runnable tasks fill every processor this process may use; the kernel's count of runnable tasks now, not
the load average, which lags by a minute: right after another job has ended it still reads busy, and
measured so, a quiet machine got the passive wait and trained 25% slower) and otherwise leaves libgomp's
default. libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so this runs at the top
of the ``cnnbench`` command (:func:`cnnbench.cli.main`) before anything imports torch. A value the user
set wins either way: ``OMP_WAIT_POLICY=PASSIVE`` or ``ACTIVE cnnbench train ...``.
"""

from __future__ import annotations

import os
import sys
import time

WAIT_POLICY = "PASSIVE"


def usable_cores() -> int:
    """Processors this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def runnable_tasks() -> int | None:
    """Tasks runnable right now, this process included (the 4th field of /proc/loadavg, "R/total"),
    the median of a few reads 10 ms apart; None where the kernel does not say (not Linux)."""
    counts = []
    for i in range(5):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            return None
        if i < 4:
            time.sleep(0.01)
    return sorted(counts)[len(counts) // 2]


def machine_is_busy() -> bool:
    """Other runnable tasks fill every usable core (False where that cannot be read)."""
    running = runnable_tasks()
    return running is not None and running - 1 >= usable_cores()


def choose_omp_wait() -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` on a busy machine, unless the user set a policy or torch is already
    loaded (then it is too late to matter); returns the policy in the environment (None: libgomp's
    default spin-then-sleep)."""
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules and machine_is_busy():
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return os.environ.get("OMP_WAIT_POLICY")


def omp_wait_policy() -> str | None:
    """The wait policy in this process's environment (None: libgomp's default, spin then sleep)."""
    return os.environ.get("OMP_WAIT_POLICY")
