"""Memory reuse on the CPU: glibc's malloc told to keep freed step buffers for the next step.

A training step on the CPU allocates its activations and gradients afresh (PyTorch's CPU allocator is a
thin layer over ``malloc``). With glibc's defaults every buffer above the mmap threshold (128 KiB at
first, raised dynamically up to 32 MiB) is mapped from the kernel on allocation and unmapped on free,
and the top of the heap is trimmed back to the kernel once more than 128 KiB is free there. A 256-image
batch's activations are megabytes, so every step pays for fresh pages: the page faults that zero them
and the ``munmap``/``brk`` calls, as system time (LeNet, 3 epochs: 4.5 s of 21 CPU-seconds).

``tune_malloc()`` raises those thresholds once per process, through ``mallopt`` (the same knobs as the
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_TOP_PAD_`` environment variables,
which only take effect at start-up): buffers up to :data:`MMAP_THRESHOLD` come from the heap and freed
memory stays there for the next step. The cost is memory held, never more than the largest step's
working set. Where glibc is not the C library (macOS, Windows, musl) it does nothing and says so at
debug level. ``device.malloc_tuning=false`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024  # keep up to 1 GiB of free heap top instead of giving it back
TOP_PAD = 64 * 1024 * 1024  # grow the heap in steps of 64 MiB, not one allocation at a time

SETTINGS: dict[int, int] = {
    M_MMAP_THRESHOLD: MMAP_THRESHOLD,
    M_TRIM_THRESHOLD: TRIM_THRESHOLD,
    M_TOP_PAD: TOP_PAD,
}
NAMES = {M_MMAP_THRESHOLD: "M_MMAP_THRESHOLD", M_TRIM_THRESHOLD: "M_TRIM_THRESHOLD", M_TOP_PAD: "M_TOP_PAD"}

_applied: bool | None = None  # None: not decided yet in this process; then whether the settings are in force


def glibc_mallopt():
    """glibc's ``mallopt`` as a ctypes function, or None where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None  # musl and other C libraries: their mallopt, if any, is a stub
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def tune_malloc(enabled: bool = True) -> bool:
    """Apply :data:`SETTINGS` once per process (later calls do nothing); returns whether they are in force.

    The first call decides: ``enabled=False`` leaves glibc's defaults for the whole process (a later
    ``enabled=True`` does not change them either, so every run of a process trains under one setting).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not enabled:
        logger.debug("malloc tuning off (device.malloc_tuning=false)")
        return False
    mallopt = glibc_mallopt()
    if mallopt is None:
        logger.debug("malloc tuning skipped: the C library is not glibc (%s)", sys.platform)
        return False
    failed = [NAMES[param] for param, value in SETTINGS.items() if mallopt(param, value) != 1]
    if failed:
        logger.debug("malloc tuning: glibc refused %s", ", ".join(failed))
    _applied = len(failed) < len(SETTINGS)
    logger.debug("malloc tuning: %s", ", ".join(f"{NAMES[p]}={v}" for p, v in SETTINGS.items()))
    return _applied


def malloc_tuned() -> bool:
    """Whether this process runs with the tuned settings."""
    return bool(_applied)
