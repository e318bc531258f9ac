"""OpenMP threads that sleep when idle: set before torch starts, so it must happen at process start.

PyTorch's CPU kernels run on an OpenMP team (GNU libgomp in the PyPI wheels). By default a thread that
finishes its share of a parallel loop spins, waiting for the next loop, for up to about 300,000
iterations. On an idle machine that saves a wake-up per loop; on a busy one (two cores shared with other
jobs, or the DataLoader workers of the book's own pipeline) the spinning thread holds a core while the
thread it waits for is descheduled, and each barrier costs a scheduler time slice: a LeNet step measured
0.57-0.87 s instead of 0.07 s with ``OMP_WAIT_POLICY=PASSIVE`` on this 2-core machine at load 10.

libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so :func:`passive_omp_wait` runs at the
top of the ``cnnbench`` command (:func:`cnnbench.cli.main`) before anything imports torch. A value the
user set wins: ``OMP_WAIT_POLICY=ACTIVE cnnbench train ...`` gives libgomp's spinning back.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def passive_omp_wait() -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it or torch is already loaded (then it is
    too late to matter); returns the policy in the environment."""
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return os.environ.get("OMP_WAIT_POLICY")


def omp_wait_policy() -> str | None:
    """The wait policy in this process's environment (None: libgomp's default, spinning)."""
    return os.environ.get("OMP_WAIT_POLICY")
