"""How OpenMP threads wait between kernels: sleep at once on a busy machine, a bounded spin otherwise.

PyTorch's CPU kernels run on an OpenMP team (GNU libgomp in the PyPI wheels). By default a thread that
finishes its share of a parallel loop spins, waiting for the next loop, for up to about 300,000
iterations before it sleeps. Measured on a 2-core machine (LeNet-BN, 3 epochs of the book's recipe):

* quiet machine: the default spin trains 18,000-19,000 images/s; ``OMP_WAIT_POLICY=PASSIVE`` (sleep at
  once) 10,600-11,500 images/s, 40% slower, because every small kernel pays a thread wake-up;
* busy machine (load 10 on 2 cores): the spinning thread holds a core while the thread it waits for is
  descheduled, and each barrier costs a scheduler time slice: a LeNet step took 0.57-0.87 s with the
  default and 0.07 s with ``PASSIVE``.

* two runs at once on the same 2 cores: libgomp's default spin collapses, 2,200-2,500 images/s each,
  against 10,200-10,400 each with ``PASSIVE``; a spin bounded by ``GOMP_SPINCOUNT=10000`` gives 5,300
  each (3,000: 7,600; 1,000: 9,000), and alone 14,900-16,300 against the default's 16,400 (3,000: 15,500;
  1,000: 13,000).

The spin bound was re-measured on another 2-core Xeon (2026-11-30, AMX; LeNet-BN training steps, whole
processes in alternation, medians): alone, 20000 and 30000 iterations ran 4% faster than 10000 (8 pairs;
15000: 1%), libgomp's default 5% (6 pairs); two runs at once, each, 10000: 37-40 ms a step, 20000: 56 ms,
30000: 74-75 ms, default 84-177 ms, PASSIVE 19-20 ms. A whole 10-epoch LeNet-BN command: 20000 vs 10000,
A/B wall 0.965 (4 pairs, 0.94-0.98).

So :func:`choose_omp_wait` sets ``PASSIVE`` when the machine is busy at the command's start (other runnable
tasks on every processor this process may use: the kernel's count of runnable tasks now, not the load
average, which lags by a minute and still read busy right after another job had ended), and otherwise
bounds the spin to ``GOMP_SPINCOUNT=20000``: the default's speed alone, and a run that another job
joins later (which it cannot foresee) degrades 1.5-3x less than with the default (10000 would save that
run another third, at 4% of every run alone). libgomp reads both variables once, when torch loads it,
so this runs at the top of the ``cnnbench`` command (:func:`cnnbench.cli.main`) before anything imports
torch. A value the user set for either wins: ``OMP_WAIT_POLICY=PASSIVE`` or ``ACTIVE``, or
``GOMP_SPINCOUNT=N cnnbench train ...``.
"""

from __future__ import annotations

import os
import sys
import time

WAIT_POLICY = "PASSIVE"  # on a busy machine
SPIN_COUNT = "20000"  # on a quiet one: libgomp spins this many iterations, then sleeps


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
    """Set ``OMP_WAIT_POLICY=PASSIVE`` on a busy machine, else ``GOMP_SPINCOUNT=20000``, unless the user
    set either or torch is already loaded (then it is too late to matter); returns the setting in force
    (:func:`omp_wait_policy`)."""
    user_set = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
    if not user_set and "torch" not in sys.modules:
        if machine_is_busy():
            os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
        else:
            os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return omp_wait_policy()


def omp_wait_policy() -> str | None:
    """The OpenMP wait in this process's environment: ``OMP_WAIT_POLICY``'s value, or "spin N" for a
    bounded spin (``GOMP_SPINCOUNT``), or None (libgomp's default: spin 300,000 iterations, then sleep)."""
    if os.environ.get("OMP_WAIT_POLICY"):
        return os.environ["OMP_WAIT_POLICY"]
    if os.environ.get("GOMP_SPINCOUNT"):
        return f"spin {os.environ['GOMP_SPINCOUNT']}"
    return None
