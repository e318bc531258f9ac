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
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
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
    monkeypatch.setattr(threads, "runnable_tasks", lambda: load)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    assert threads.choose_omp_wait() == expected
    assert {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} == {
        "OMP_WAIT_POLICY": {"PASSIVE": "PASSIVE", "ACTIVE": "ACTIVE"}.get(expected),
        "GOMP_SPINCOUNT": expected.removeprefix("spin ") if expected.startswith("spin") else None}
