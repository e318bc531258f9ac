"""How OpenMP threads wait between kernels: sleep at once on a busy machine, a bounded spin otherwise.

PyTorch's CPU kernels run on an OpenMP team (GNU libgomp in the PyPI wheels for Linux). By default a thread that
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

``GOMP_SPINCOUNT`` is libgomp's own variable: it is set only where torch loads libgomp, which
:func:`openmp_runtime` tells before torch loads, from the runtime bundled in torch's lib folder (PyPI:
libgomp on Linux, LLVM's libomp on macOS, Intel's libiomp5 on Windows), else from the runtime that
``libtorch_cpu.so`` names as needed (conda builds link the environment's). Intel's and LLVM's runtimes
spin ``KMP_BLOCKTIME`` milliseconds (200 by default) instead; a bound for them was never measured, so
there only the standard ``OMP_WAIT_POLICY=PASSIVE`` is set, on a busy machine, and a ``KMP_BLOCKTIME`` the
user set counts as their choice. What is recorded (:func:`omp_wait_policy`) is what the runtime reads.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
import time
from pathlib import Path

WAIT_POLICY = "PASSIVE"  # on a busy machine
SPIN_COUNT = "20000"  # on a quiet one: libgomp spins this many iterations, then sleeps

GNU, INTEL, LLVM = "libgomp", "libiomp5", "libomp"  # the OpenMP runtimes torch builds use, by file name
# Each runtime's own bound on a waiting thread's spin: iterations for libgomp, milliseconds for the others.
SPIN_VARIABLE = {GNU: "GOMP_SPINCOUNT", INTEL: "KMP_BLOCKTIME", LLVM: "KMP_BLOCKTIME"}


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


def torch_lib_dir() -> Path | None:
    """The installed torch package's ``lib`` folder, found without importing torch; None without torch."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "lib"


def runtime_named(names: list[str]) -> str | None:
    """The one OpenMP runtime among these library file names (libgomp.so.1, libgomp-a34b3233.so.1,
    libiomp5md.dll, libomp.dylib, ...); None when there is none, or more than one."""
    found = {rt for name in names for rt in (GNU, INTEL, LLVM) if name.startswith(rt)}
    return found.pop() if len(found) == 1 else None


def openmp_runtime() -> str | None:
    """The OpenMP runtime torch loads (:data:`GNU`, :data:`INTEL` or :data:`LLVM`), told without loading
    torch: the one bundled in its lib folder, else the one ``libtorch_cpu.so`` needs; None where neither
    says (torch missing, or an unknown layout)."""
    lib = torch_lib_dir()
    try:
        names = [p.name for p in lib.iterdir()] if lib is not None else []
    except OSError:
        names = []
    runtime = runtime_named(names)
    if runtime is None and "libtorch_cpu.so" in names:
        runtime = runtime_named(elf_needed(lib / "libtorch_cpu.so"))
    return runtime


def elf_needed(path: Path) -> list[str]:
    """The libraries an ELF shared library names as needed (its DT_NEEDED entries), read from its section
    headers (a few kilobytes of the file); [] for a file that is not ELF or cannot be read."""
    try:
        with open(path, "rb") as f:
            ident = f.read(16)
            if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2):
                return []
            wide, end = ident[4] == 2, "<" if ident[5] == 1 else ">"
            f.seek(0x28 if wide else 0x20)  # e_shoff: where the section headers are
            (shoff,) = struct.unpack(end + ("Q" if wide else "I"), f.read(8 if wide else 4))
            f.seek(0x3A if wide else 0x2E)
            shentsize, shnum = struct.unpack(end + "HH", f.read(4))
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            # (sh_type, sh_offset, sh_size, sh_link) of each section header
            layout = end + ("IIQQQQI" if wide else "IIIIIII")
            sections = [struct.unpack_from(layout, table, i * shentsize) for i in range(shnum)]
            sections = [(sh[1], sh[4], sh[5], sh[6]) for sh in sections]
            for kind, offset, size, link in sections:
                if kind != 6 or link >= len(sections):  # SHT_DYNAMIC, naming its string table
                    continue
                f.seek(offset)
                dynamic = f.read(size)
                f.seek(sections[link][1])
                strings = f.read(sections[link][2])
                entries = struct.iter_unpack(end + ("qQ" if wide else "iI"), dynamic)  # (d_tag, d_val)
                # DT_NEEDED (1): d_val is the name's offset in the string table
                return [strings[val:strings.index(b"\0", val)].decode() for tag, val in entries if tag == 1]
    except (OSError, struct.error, ValueError, IndexError):
        pass
    return []


FIXED_COUNT = ("device.num_threads=", "trainer.deterministic=true")  # overrides that keep one thread count


def follows_the_load(argv: list[str]) -> bool:
    """Whether this command will train with a thread count that follows the load (cnnbench.speed.load):
    ``train`` without a fixed ``device.num_threads`` or ``trainer.deterministic=true`` on its command line."""
    if not argv or argv[0] != "train":
        return False
    for arg in argv[1:]:
        key = arg.lstrip("+~")
        if key.startswith(FIXED_COUNT[0]) and key != "device.num_threads=auto":
            return False
        if key.lower() == FIXED_COUNT[1]:
            return False
    return True


def choose_omp_wait(follows: bool = False) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` on a busy machine, else ``GOMP_SPINCOUNT=20000`` where torch's
    runtime is libgomp, unless the user set either (or the runtime's own spin variable) or torch is
    already loaded (then it is too late to matter); returns the setting in force (:func:`omp_wait_policy`).

    ``follows``: the run will follow the load with its thread count, so no thread shares a core with another
    program and a busy start needs no passive wait (which would cost the run 40% once the machine is quiet
    and the count goes back up): the bounded spin either way."""
    runtime = openmp_runtime()
    spin_variable = SPIN_VARIABLE.get(runtime)  # another runtime's variable is no choice of the user's here
    user_set = "OMP_WAIT_POLICY" in os.environ or (spin_variable is not None and spin_variable in os.environ)
    if not user_set and "torch" not in sys.modules:
        if not follows and machine_is_busy():
            os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
        elif runtime == GNU:  # the spin bound was measured with libgomp only
            os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    return omp_wait_policy()


def omp_wait_policy() -> str | None:
    """The OpenMP wait torch's runtime reads from this process's environment: ``OMP_WAIT_POLICY``'s value,
    else the runtime's own spin bound ("spin N" for libgomp's ``GOMP_SPINCOUNT`` iterations, "blocktime N
    ms" for Intel's or LLVM's ``KMP_BLOCKTIME``), else None: the runtime's default (libgomp: spin 300,000
    iterations, then sleep; the others: 200 ms). Another runtime's variable is not in force: not recorded."""
    if os.environ.get("OMP_WAIT_POLICY"):
        return os.environ["OMP_WAIT_POLICY"]
    runtime = openmp_runtime()
    variable = SPIN_VARIABLE.get(runtime)
    if variable and os.environ.get(variable):
        return f"spin {os.environ[variable]}" if runtime == GNU else f"blocktime {os.environ[variable]} ms"
    return None
