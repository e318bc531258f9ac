"""OpenMP threads that sleep when idle, on a busy machine only: decided before torch starts.

PyTorch's CPU kernels run on an OpenMP team (GNU libgomp in the PyPI wheels). By default a thread that
finishes its share of a parallel loop spins, waiting for the next loop, for up to about 300,000
iterations before it sleeps. Measured on a 2-core machine (LeNet-BN, 3 epochs of the book's recipe):

* quiet machine: the default spin trains 18,000-19,000 images/s; ``OMP_WAIT_POLICY=PASSIVE`` (sleep at
  once) 10,600-11,500 images/s, 40% slower, because every small kernel pays a thread wake-up;
* busy machine (load 10 on 2 cores): the spinning thread holds a core while the thread it waits for is
  descheduled, and each barrier costs a scheduler time slice: a LeNet step took 0.57-0.87 s with the
  default and 0.07 s with ``PASSIVE``.

So :func:`choose_omp_wait` sets ``PASSIVE`` only when the machine is already busier than its cores (the
1-minute load average at least the number of processors this process may use) and otherwise leaves
libgomp's default. libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so this runs at the top
of the ``cnnbench`` command (:func:`cnnbench.cli.main`) before anything imports torch. A value the user
set wins either way: ``OMP_WAIT_POLICY=PASSIVE`` or ``ACTIVE cnnbench train ...``.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def usable_cores() -> int:
    """Processors this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_is_busy() -> bool:
    """The 1-minute load average is at least the number of usable cores (False where there is none)."""
    try:
        return os.getloadavg()[0] >= usable_cores()
    except (AttributeError, OSError):
        return False


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
