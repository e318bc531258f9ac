"""CPU memory reuse (cnnbench.speed.allocator): glibc's mallopt, applied once per process, switchable,
result-neutral."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys

import pytest

import cnnbench.speed.allocator as allocator
from tests.helpers import cli, fast_overrides

ON_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.fixture
def fresh(monkeypatch):
    """A process in which the tuning has not been decided yet, and a recorder in place of mallopt."""
    monkeypatch.setattr(allocator, "_applied", None)
    calls: list[tuple[int, int]] = []

    def fake_mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    monkeypatch.setattr(allocator, "glibc_mallopt", lambda: fake_mallopt)
    return calls


def test_settings_are_applied_once_per_process(fresh):
    assert allocator.tune_malloc() is True
    assert fresh == list(allocator.SETTINGS.items())
    assert allocator.tune_malloc() is True and allocator.tune_malloc(False) is True  # the first call decided
    assert len(fresh) == len(allocator.SETTINGS)
    assert allocator.malloc_tuned()


def test_the_off_switch_leaves_malloc_alone(fresh):
    assert allocator.tune_malloc(enabled=False) is False
    assert allocator.tune_malloc(enabled=True) is False  # later runs of the process keep the first decision
    assert fresh == [] and not allocator.malloc_tuned()


@pytest.mark.skipif(not ON_GLIBC, reason="glibc only")
def test_on_glibc_the_real_mallopt_gets_the_values(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    real = allocator.glibc_mallopt()
    assert real is not None, "glibc's mallopt not found on a glibc system"
    calls = []

    def spy(param, value):
        calls.append((param, value))
        return real(param, value)

    monkeypatch.setattr(allocator, "glibc_mallopt", lambda: spy)
    assert allocator.tune_malloc() is True  # glibc accepted every value (mallopt returned 1)
    assert dict(calls) == {-4: 0, -1: 1 << 30, -2: 64 << 20}  # M_MMAP_MAX, M_TRIM_THRESHOLD, M_TOP_PAD


def test_nothing_happens_off_glibc(monkeypatch, caplog):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.glibc_mallopt() is None
    with caplog.at_level(logging.DEBUG, logger="cnnbench.speed.allocator"):
        assert allocator.tune_malloc() is False
    assert "not glibc" in caplog.text


def test_a_run_tunes_malloc_before_reading_its_data(fake_data, tmp_path, monkeypatch):
    """train() in-process (tests, notebooks) applies the setting itself, before the dataset is read."""
    import cnnbench.data.sources as sources
    import cnnbench.run.build as build
    from cnnbench.run.train import train
    from tests.helpers import compose_fast

    order = []
    real_tune, real_load = build.tune_malloc, sources.load_splits
    monkeypatch.setattr(build, "tune_malloc",
                        lambda enabled=True: order.append(("tune", enabled)) or real_tune(enabled))
    # the build reads the splits through the spec (RunSpec.load_splits -> data.sources.load_splits)
    monkeypatch.setattr(sources, "load_splits", lambda *a, **k: order.append(("load",)) or real_load(*a, **k))
    summary = train(compose_fast(fake_data, "trainer.epochs=1", "trainer.limit_train_batches=1",
                                 "trainer.limit_eval_batches=1", "trainer.checkpoint=false"), tmp_path)
    assert summary["status"] == "completed", summary["error"]
    assert order[:2] == [("tune", True), ("load",)]
    assert summary["speed"]["malloc_tuning"] == allocator.malloc_tuned()


def _cli_run(data, out, *extra) -> tuple[list[float], dict]:
    """A 4-step LeNet-BN run in its own process (the setting is process-wide): logged losses, summary."""
    args = fast_overrides(data, "model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=1",
                          "trainer.limit_train_batches=4", "trainer.logs_per_epoch=4", "trainer.limit_eval_batches=1",
                          "trainer.checkpoint=false", f"hydra.run.dir={out}", *extra)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    proc = subprocess.run(cli("train", *args), capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return [r["train/loss"] for r in records if r["kind"] == "train"], summary


@pytest.mark.slow  # two commands (~8 s): malloc settings are process-wide
def test_tuning_changes_no_result_and_the_switch_reaches_the_summary(fake_data, tmp_path):
    tuned, tuned_summary = _cli_run(fake_data, tmp_path / "tuned")
    plain, plain_summary = _cli_run(fake_data, tmp_path / "plain", "device.malloc_tuning=false")
    assert len(tuned) == len(plain) == 4
    assert tuned == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert tuned_summary["speed"]["malloc_tuning"] is ON_GLIBC  # on by default wherever glibc is
    assert plain_summary["speed"]["malloc_tuning"] is False
    # set by the command (cnnbench.speed.threads): which one depends on how busy the machine is at the start
    assert tuned_summary["speed"]["omp_wait_policy"] in ("PASSIVE", "spin 20000")
