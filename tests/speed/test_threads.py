"""The cnnbench command chooses how OpenMP threads wait before torch loads: PASSIVE on a busy machine, a
bounded spin otherwise; the user's values win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The probe fakes the kernel's count of runnable tasks (a busy or a quiet machine), then runs a command
# that loads torch.
PROBE = ("import os, sys; from cnnbench.speed import threads; threads.runnable_tasks = lambda: {load}; "
         "from cnnbench.cli import main; main(['models', 'lenet_bn']); "
         "print('policy', os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")


@pytest.mark.parametrize("given,load,expected", [
    ({}, 5000, "PASSIVE None"),   # more runnable tasks than any machine's cores: sleep at once
    ({}, 1, "None 20000"),        # only this process: a bounded spin (40% faster than PASSIVE alone)
    # the user's values win (also in-process, fast, below)
    pytest.param({"OMP_WAIT_POLICY": "ACTIVE"}, 5000, "ACTIVE None", marks=pytest.mark.slow),
    pytest.param({"OMP_WAIT_POLICY": "PASSIVE"}, 1, "PASSIVE None", marks=pytest.mark.slow),
    pytest.param({"GOMP_SPINCOUNT": "300000"}, 1, "None 300000", marks=pytest.mark.slow),
])
def test_the_command_chooses_the_openmp_wait_before_torch_loads(given, load, expected):
    from cnnbench.speed import threads

    if expected == "None 20000" and threads.openmp_runtime() != threads.GNU:
        expected = "None None"  # the spin bound is libgomp's: nothing to set for another runtime
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env.update(given)
    out = subprocess.run([sys.executable, "-c", PROBE.format(load=load)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"policy {expected} True"  # torch was loaded after it


def test_busy_means_other_runnable_tasks_on_every_usable_core(monkeypatch):
    from cnnbench.speed import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    for running, busy in ((1, False), (2, False), (3, True), (12, True), (None, False)):
        monkeypatch.setattr(threads, "runnable_tasks", lambda running=running: running)
        assert threads.machine_is_busy() is busy


def test_the_runnable_count_is_the_kernels(monkeypatch):
    """Read from /proc/loadavg's "R/total" field: this process at least, never more than all tasks."""
    from cnnbench.speed import threads

    if not os.path.exists("/proc/loadavg"):
        pytest.skip("no /proc/loadavg (not Linux)")
    running = threads.runnable_tasks()
    total = int(open("/proc/loadavg").read().split()[3].split("/")[1])
    assert 1 <= running <= total + 50


def test_too_late_once_torch_is_loaded(monkeypatch):
    """In a process that already imported torch (a test, a notebook) libgomp has read its settings:
    setting the variable then would only make the summary claim what is not in force."""
    import torch  # noqa: F401

    from cnnbench.speed import threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    for busy in (True, False):
        monkeypatch.setattr(threads, "machine_is_busy", lambda busy=busy: busy)
        assert threads.choose_omp_wait() is None
        assert "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.parametrize("given,load,expected", [
    ({}, 5000, "PASSIVE"), ({}, 1, "spin 20000"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, 5000, "ACTIVE"), ({"OMP_WAIT_POLICY": "PASSIVE"}, 1, "PASSIVE"),
    ({"GOMP_SPINCOUNT": "300000"}, 1, "spin 300000"), ({"GOMP_SPINCOUNT": "300000"}, 5000, "spin 300000"),
])
def test_the_choice_and_the_users_values_in_process(monkeypatch, given, load, expected):
    """choose_omp_wait as the command's start sees it (torch not yet loaded): busy -> PASSIVE, quiet -> a
    bounded spin, and a value the user set is left as it is."""
    from cnnbench.speed import threads

    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # restored after the test
    monkeypatch.setattr(threads, "openmp_runtime", lambda: threads.GNU)  # as in the PyPI wheels for Linux
    monkeypatch.setattr(threads, "runnable_tasks", lambda: load)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.choose_omp_wait() == expected
    assert {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} == {
        "OMP_WAIT_POLICY": {"PASSIVE": "PASSIVE", "ACTIVE": "ACTIVE"}.get(expected),
        "GOMP_SPINCOUNT": expected.removeprefix("spin ") if expected.startswith("spin") else None}


@pytest.mark.parametrize("argv,follows", [
    (["train"], True), (["train", "model=lenet", "device.num_threads=auto"], True),
    (["train", "device.num_threads=2"], False), (["train", "device.num_threads=null"], False),
    (["train", "trainer.deterministic=true"], False), (["train", "trainer.deterministic=True"], False),
    (["eval", "outputs/run"], False), ([], False),
])
def test_which_commands_follow_the_load(argv, follows):
    """A train command follows the load unless its command line fixes the thread count."""
    from cnnbench.speed import threads

    assert threads.follows_the_load(argv) is follows


def test_the_train_command_tells_the_choice_it_follows_the_load():
    """Through the command line: a busy machine, `train` (which follows the load) spins; `train` with a fixed
    count sleeps at once."""
    probe = ("import os, sys; from cnnbench.speed import threads; threads.runnable_tasks = lambda: 5000\n"
             "threads.openmp_runtime = lambda: threads.GNU\n"
             "from cnnbench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print('policy', os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    for args, expected in ((["train", "--help"], "policy None 20000"),
                           (["train", "device.num_threads=1", "--help"], "policy PASSIVE None")):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=300,
                             env=env)
        assert out.stdout.strip().splitlines()[-1] == expected, (args, out.stderr[-2000:])


def test_a_run_that_follows_the_load_spins_even_on_a_busy_machine(monkeypatch):
    """Its threads never share a core with another program (cnnbench.speed.load), so a busy start needs no
    passive wait, which would cost it 40% once the machine is quiet and its thread count goes back up."""
    from cnnbench.speed import threads

    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(threads, "openmp_runtime", lambda: threads.GNU)
    monkeypatch.setattr(threads, "machine_is_busy", lambda: True)
    assert threads.choose_omp_wait(follows=True) == "spin 20000"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    assert threads.choose_omp_wait(follows=False) == "PASSIVE"


# --------------------------------------------------------------------- which OpenMP runtime torch loads

LIB_FOLDERS = {  # torch's lib folder in each kind of build (the files that tell; others left out)
    "pypi-linux": ["libc10.so", "libgomp.so.1", "libtorch_cpu.so"],
    "auditwheel": ["libc10.so", "libgomp-a34b3233.so.1", "libtorch_cpu.so"],
    "pypi-macos": ["libc10.dylib", "libomp.dylib", "libtorch_cpu.dylib"],
    "pypi-windows": ["c10.dll", "libiomp5md.dll", "torch_cpu.dll"],
    "intel": ["libc10.so", "libiomp5.so", "libtorch_cpu.so"],
    "none": ["libc10.dylib", "libtorch_cpu.dylib"],
}


def fake_torch_lib(monkeypatch, tmp_path, build: str):
    from cnnbench.speed import threads

    lib = tmp_path / "torch" / "lib"
    lib.mkdir(parents=True)
    for name in LIB_FOLDERS[build]:
        (lib / name).write_bytes(b"")
    monkeypatch.setattr(threads, "torch_lib_dir", lambda: lib)
    return lib


@pytest.mark.parametrize("build,runtime", [
    ("pypi-linux", "libgomp"), ("auditwheel", "libgomp"), ("pypi-macos", "libomp"), ("pypi-windows", "libiomp5"),
    ("intel", "libiomp5"), ("none", None),
])
def test_the_runtime_is_the_one_bundled_in_torchs_lib_folder(monkeypatch, tmp_path, build, runtime):
    from cnnbench.speed import threads

    fake_torch_lib(monkeypatch, tmp_path, build)
    assert threads.openmp_runtime() == runtime
    monkeypatch.setattr(threads, "torch_lib_dir", lambda: None)  # torch not installed
    assert threads.openmp_runtime() is None


def test_a_build_without_a_bundled_runtime_is_told_by_what_libtorch_cpu_needs(monkeypatch, tmp_path):
    """conda builds link the environment's runtime: libtorch_cpu.so's DT_NEEDED entries name it."""
    from cnnbench.speed import threads

    lib = fake_torch_lib(monkeypatch, tmp_path, "none")
    (lib / "libtorch_cpu.so").write_bytes(b"not an ELF file")
    assert threads.openmp_runtime() is None
    read = []
    needed = ["libc10.so", "libomp.so", "libc.so.6"]
    monkeypatch.setattr(threads, "elf_needed", lambda path: read.append(path) or needed)
    assert threads.openmp_runtime() == threads.LLVM and read == [lib / "libtorch_cpu.so"]


def test_elf_needed_reads_the_installed_libtorch_cpu():
    """On the real library: torch's own libc10 is needed, and so is the runtime bundled beside it."""
    from cnnbench.speed import threads

    lib = threads.torch_lib_dir()
    if lib is None or not (lib / "libtorch_cpu.so").exists():
        pytest.skip("no libtorch_cpu.so (not an ELF build of torch)")
    needed = threads.elf_needed(lib / "libtorch_cpu.so")
    assert "libc10.so" in needed
    bundled = threads.runtime_named([p.name for p in lib.iterdir()])
    assert bundled is None or threads.runtime_named(needed) == bundled
    assert threads.elf_needed(lib.parent / "__init__.py") == []


@pytest.mark.parametrize("build,given,busy,expected_env,recorded", [
    ("pypi-linux", {}, False, {"GOMP_SPINCOUNT": "20000"}, "spin 20000"),
    ("pypi-linux", {}, True, {"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE"),
    # another runtime: OMP_WAIT_POLICY (standard OpenMP) on a busy machine, no libgomp variable ever
    ("pypi-macos", {}, False, {}, None),
    ("pypi-macos", {}, True, {"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE"),
    ("pypi-windows", {}, False, {}, None),
    ("intel", {}, True, {"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE"),
    ("none", {}, False, {}, None),
    ("none", {}, True, {"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE"),
    # the user's values: the runtime's own spin variable wins and is recorded; another runtime's is neither
    ("pypi-macos", {"KMP_BLOCKTIME": "0"}, True, {"KMP_BLOCKTIME": "0"}, "blocktime 0 ms"),
    ("intel", {"KMP_BLOCKTIME": "50"}, False, {"KMP_BLOCKTIME": "50"}, "blocktime 50 ms"),
    ("pypi-macos", {"GOMP_SPINCOUNT": "300000"}, True, {"GOMP_SPINCOUNT": "300000", "OMP_WAIT_POLICY": "PASSIVE"},
     "PASSIVE"),
    ("pypi-macos", {"GOMP_SPINCOUNT": "300000"}, False, {"GOMP_SPINCOUNT": "300000"}, None),
    ("none", {"GOMP_SPINCOUNT": "300000"}, False, {"GOMP_SPINCOUNT": "300000"}, None),  # not known to be read
    ("pypi-linux", {"KMP_BLOCKTIME": "0"}, False, {"KMP_BLOCKTIME": "0", "GOMP_SPINCOUNT": "20000"}, "spin 20000"),
    ("pypi-linux", {"GOMP_SPINCOUNT": "300000"}, True, {"GOMP_SPINCOUNT": "300000"}, "spin 300000"),
])
def test_each_runtime_gets_only_its_own_variables(monkeypatch, tmp_path, build, given, busy, expected_env, recorded):
    """A fake torch lib folder per build: what choose_omp_wait sets, and what is recorded as in force."""
    from cnnbench.speed import threads

    fake_torch_lib(monkeypatch, tmp_path, build)
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
    for key in keys:
        monkeypatch.delenv(key, raising=False)
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # restored after the test
    monkeypatch.setattr(threads, "machine_is_busy", lambda: busy)
    assert threads.choose_omp_wait() == recorded
    assert {k: os.environ[k] for k in keys if k in os.environ} == expected_env
    assert threads.omp_wait_policy() == recorded  # what the run's summary records later
