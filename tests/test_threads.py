"""OMP_WAIT_POLICY=PASSIVE is set by the cnnbench command before torch loads; the user's value wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = ("import os, sys; from cnnbench.cli import main; "
         "main(['models', 'lenet_bn']); print('policy', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")


@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_sets_a_passive_wait_before_torch_loads(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"policy {expected} True"  # torch was loaded after it


def test_too_late_once_torch_is_loaded(monkeypatch):
    """In a process that already imported torch (a test, a notebook) libgomp has read its settings:
    setting the variable then would only make the summary claim what is not in force."""
    import torch  # noqa: F401

    from cnnbench.threads import passive_omp_wait

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert passive_omp_wait() is None and "OMP_WAIT_POLICY" not in os.environ
