"""OMP_WAIT_POLICY=PASSIVE is set by the cnnbench command before torch loads, on a busy machine only;
the user's value wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The probe fakes the load average (a busy or a quiet machine), then runs a command that loads torch.
PROBE = ("import os, sys; os.getloadavg = lambda: ({load}, {load}, {load}); from cnnbench.cli import main; "
         "main(['models', 'lenet_bn']); print('policy', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")


@pytest.mark.parametrize("given,load,expected", [
    (None, 500.0, "PASSIVE"),    # busier than any machine's cores: sleep at once
    (None, 0.0, "None"),         # quiet: libgomp's default spin (40% faster on small kernels, measured)
    ("ACTIVE", 500.0, "ACTIVE"),  # the user's value wins
    ("PASSIVE", 0.0, "PASSIVE"),
])
def test_the_command_sets_a_passive_wait_on_a_busy_machine_before_torch_loads(given, load, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE.format(load=load)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"policy {expected} True"  # torch was loaded after it


def test_busy_means_a_load_of_at_least_one_per_usable_core(monkeypatch):
    from cnnbench import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    for load, busy in ((1.99, False), (2.0, True), (9.5, True)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert threads.machine_is_busy() is busy


def test_too_late_once_torch_is_loaded(monkeypatch):
    """In a process that already imported torch (a test, a notebook) libgomp has read its settings:
    setting the variable then would only make the summary claim what is not in force."""
    import torch  # noqa: F401

    from cnnbench import threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(threads, "machine_is_busy", lambda: True)
    assert threads.choose_omp_wait() is None and "OMP_WAIT_POLICY" not in os.environ
