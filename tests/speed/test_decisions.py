"""Start-up timing decisions are kept (:mod:`cnnbench.speed.decisions`), and summary.json records them: what a
reader needs to repeat a run's numbers."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cnnbench.run.summary import _tuning_words
from cnnbench.speed import decisions, load
from tests.helpers import REPO, compose_fast


def counting_timer(choices: list[dict]):
    """A stand-in for the timing: returns the next of ``choices`` and counts its calls."""
    calls = []

    def time_it() -> dict:
        calls.append(1)
        return {"choice": choices[min(len(calls), len(choices)) - 1], "timings": {"tuning": {"fp32": len(calls)}}}
    return time_it, calls


NCHW = {"precision": "fp32", "channels_last": False, "nhwc_weight_grads": [], "gemm_weight_grads": []}
NHWC = {"precision": "fp32", "channels_last": True, "nhwc_weight_grads": ["0"], "gemm_weight_grads": []}
KEY = {"model": {"name": "lenet_bn"}, "batch": 256, "cpu": "test CPU"}


def test_a_decision_is_kept_and_reused_without_timing_again():
    time_it, calls = counting_timer([NHWC, NCHW])
    entry, record = decisions.decide(KEY, "cached", time_it)
    assert (entry["choice"], record["source"], len(calls)) == (NHWC, "timed", 1)
    assert record["file"] == str(decisions.entry_folder(KEY) / decisions.DECISION)
    again, record = decisions.decide(KEY, "cached", time_it)
    assert len(calls) == 1  # not timed again: a load that would now pick NCHW cannot change the run
    assert (again["choice"], record["source"], record["decided"]) == (NHWC, "cache", entry["decided"])


def test_refresh_times_again_and_keeps_the_new_decision():
    time_it, calls = counting_timer([NHWC, NCHW])
    decisions.decide(KEY, "cached", time_it)
    entry, record = decisions.decide(KEY, "refresh", time_it)
    assert (entry["choice"], record["source"], len(calls)) == (NCHW, "timed", 2)
    assert decisions.decide(KEY, "cached", time_it)[0]["choice"] == NCHW and len(calls) == 2


def test_always_times_every_run_and_keeps_nothing():
    time_it, calls = counting_timer([NHWC, NCHW])
    decisions.decide(KEY, "always", time_it)
    entry, record = decisions.decide(KEY, "always", time_it)
    assert (entry["choice"], record["file"], len(calls)) == (NCHW, None, 2)
    assert not decisions.entry_folder(KEY).exists()


@pytest.mark.parametrize("change", [{"batch": 128}, {"model": {"name": "lenet"}}, {"cpu": "another CPU"}])
def test_another_key_times_again(change):
    time_it, calls = counting_timer([NHWC, NCHW])
    decisions.decide(KEY, "cached", time_it)
    entry, record = decisions.decide({**KEY, **change}, "cached", time_it)
    assert (entry["choice"], record["source"], len(calls)) == (NCHW, "timed", 2)
    assert decisions.decide(KEY, "cached", time_it)[0]["choice"] == NHWC  # each key keeps its own


@pytest.mark.parametrize("content", ["{not json", '{"format": 1}', "[]", '{"format": 99, "key": {}, "choice": {}}',
                                     "KEY_WITH_BAD_CHOICE"])
def test_a_corrupt_decision_is_ignored_with_a_warning_and_rewritten(content, caplog):
    path = decisions.entry_folder(KEY) / decisions.DECISION
    path.parent.mkdir(parents=True)
    if content == "KEY_WITH_BAD_CHOICE":
        content = json.dumps({"format": decisions.FORMAT, "key": KEY, "choice": {"precision": "fp32"}})
    path.write_text(content)
    time_it, calls = counting_timer([NHWC])
    with caplog.at_level(logging.WARNING, logger="cnnbench.speed.decisions"):
        entry, record = decisions.decide(KEY, "cached", time_it)
    assert (record["source"], len(calls)) == ("timed", 1)
    assert any("ignoring the start-up timing decision" in r.getMessage() for r in caplog.records)
    assert json.loads(path.read_text())["choice"] == NHWC  # rewritten: the next run reads it
    assert decisions.decide(KEY, "cached", time_it)[1]["source"] == "cache" and len(calls) == 1


def machine_busy_with(monkeypatch, others: float):
    """The load rule in force (not the suite's "keep everything"), and /proc/stat readings in which other
    programs keep ``others`` cores busy over each timing (one second of wall time, none of it this process's)."""
    monkeypatch.delenv(decisions.TOLERANCE_ENV, raising=False)
    clock = iter(range(1000))

    def reading():
        t = next(clock)
        return load.CpuSample(busy_s=others * t, own_s=0.0, wall_s=float(t))
    monkeypatch.setattr(decisions, "cpu_sample", reading)


def test_a_decision_timed_under_load_is_used_but_not_kept(monkeypatch, caplog):
    machine_busy_with(monkeypatch, others=2.0)  # a 2-core machine's both cores held by other programs
    time_it, calls = counting_timer([NHWC, NCHW])
    with caplog.at_level(logging.INFO, logger="cnnbench.speed.decisions"):
        entry, record = decisions.decide(KEY, "cached", time_it)
    assert entry["choice"] == NHWC
    assert (record["file"], record["others_cores"], record["not_kept"]) == (None, 2.0, "load")
    assert _tuning_words(record) == " (timed at start-up beside 2.0 busy cores: not kept)"  # the run's header
    assert not (decisions.entry_folder(KEY) / decisions.DECISION).exists()
    assert any("not kept" in r.getMessage() for r in caplog.records)
    machine_busy_with(monkeypatch, others=0.0)  # the next start, on a quiet machine: times again and keeps
    entry, record = decisions.decide(KEY, "cached", time_it)
    assert (entry["choice"], record["source"], record["others_cores"], len(calls)) == (NCHW, "timed", 0.0, 2)
    assert decisions.decide(KEY, "cached", time_it)[1]["source"] == "cache" and len(calls) == 2


@pytest.mark.parametrize("others, threads, cores, kept", [
    (0.2, 2, 2, True), (0.3, 2, 2, False),  # every core the run's: a quarter of a core of others at most
    (1.0, 1, 2, True), (1.5, 1, 2, False),  # one thread on 2 cores: the other core is theirs
    (None, 2, 2, True),  # no /proc/stat (not Linux): kept, as before the rule
])
def test_how_much_load_a_kept_decision_tolerates(monkeypatch, others, threads, cores, kept):
    monkeypatch.delenv(decisions.TOLERANCE_ENV, raising=False)
    assert decisions.quiet_enough(others, threads=threads, cores=cores) is kept


def test_the_tolerance_can_be_set_and_inf_keeps_every_decision(monkeypatch):
    monkeypatch.setenv(decisions.TOLERANCE_ENV, "inf")
    assert decisions.quiet_enough(64.0, threads=2, cores=2)
    monkeypatch.setenv(decisions.TOLERANCE_ENV, "1.5")
    assert decisions.quiet_enough(1.4, threads=2, cores=2) and not decisions.quiet_enough(1.6, threads=2, cores=2)


def test_a_decision_of_the_format_before_the_load_rule_is_timed_again():
    path = decisions.entry_folder(KEY) / decisions.DECISION
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": 1, "key": KEY, "choice": NHWC, "timings": {}}))  # maybe timed under load
    time_it, calls = counting_timer([NCHW])
    entry, record = decisions.decide(KEY, "cached", time_it)
    assert (entry["choice"], record["source"], len(calls)) == (NCHW, "timed", 1)


def test_jobs_starting_together_time_once(tmp_path):
    """Three processes ask for the same key at once: one times (slowly), the others wait and read its decision."""
    script = textwrap.dedent(f"""
        import sys, time
        from cnnbench.speed import decisions
        def time_it():
            with open({str(tmp_path / "timed")!r}, "a") as f:
                f.write("x")
            time.sleep(0.5)
            return {{"choice": {NHWC!r}, "timings": {{}}}}
        entry, record = decisions.decide({KEY!r}, "cached", time_it)
        print(record["source"], entry["choice"]["channels_last"])
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    outs = sorted(p.communicate(timeout=60)[0].split()[0] for p in procs)
    assert (tmp_path / "timed").read_text() == "x"  # timed once
    assert outs == ["cache", "cache", "timed"]


# ----------------------------------------------------------------------------------- through a run


def fake_autotune(calls: list):
    """A stand-in for autotune: picks channels-last, and records the batch size it was asked to time at."""
    def autotune(model, loader, device, candidates, **kwargs):
        calls.append(loader.batch_size)
        return ("fp32", True), {"fp32": 1.0, "fp32+channels_last": 2.0}
    return autotune


def test_a_run_reuses_the_kept_decision(fake_data, tmp_path, monkeypatch):
    """Through the run's set-up: the layout is timed in the first run only, a run with another batch
    times again, device.autotune=refresh times again."""
    import cnnbench.speed.settings as speed
    from tests.helpers import built

    calls = []
    monkeypatch.setattr(speed, "autotune", fake_autotune(calls))

    def build(*overrides: str):
        return built(compose_fast(fake_data, "model=lenet_bn", "device.channels_last=auto", *overrides),
                         tmp_path).speed

    first = build()
    assert first.autotune["source"] == "timed" and calls == [256]
    second = build()
    assert calls == [256]  # the second run read the decision
    assert second.autotune["source"] == "cache" and second.channels_last is True
    assert second.tuning == {"fp32": 1.0, "fp32+channels_last": 2.0}  # the timings behind it
    assert second.autotune["file"] == first.autotune["file"]
    assert build("trainer.batch_size=32").autotune["source"] == "timed" and calls == [256, 32]
    assert build("device.autotune=refresh").autotune["mode"] == "refresh" and calls == [256, 32, 256]


def test_timing_leaves_the_random_numbers_as_they_were(fake_data, tmp_path):
    """A run that timed trains like one that read the decision: dropout in the timed steps draws nothing
    from the run's generator."""
    from cnnbench.speed.settings import time_choices
    from tests.helpers import built

    run = built(compose_fast(fake_data, "model=lenet", "trainer.batch_size=16"), tmp_path)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(10))
    model(torch.zeros(1, 1, 28, 28))
    question = {"conv_weight_grads": False, "closely": False}
    before = torch.get_rng_state()
    entry = time_choices(model, run.train_loader, torch.device("cpu"), question, [("fp32", False), ("fp32", True)])
    assert set(entry["timings"]["tuning"]) == {"fp32", "fp32+channels_last"}
    assert torch.equal(torch.get_rng_state(), before)


def test_an_unknown_autotune_mode_is_refused_before_the_run(fake_data, tmp_path):
    from cnnbench.errors import ConfigError
    from cnnbench.run.validate import validate_config

    with pytest.raises(ConfigError, match="device.autotune must be one of cached, refresh, always"):
        validate_config(compose_fast(fake_data, "device.autotune=sometimes"))


# ------------------------------------------------------------------------------------ the machine


def test_the_summary_records_the_decision_the_machine_the_source_and_the_versions(fake_data, tmp_path,
                                                                                   monkeypatch):
    import cnnbench.speed.settings as speed
    from cnnbench.run.train import train

    monkeypatch.setattr(speed, "autotune", fake_autotune([]))
    summary = train(compose_fast(fake_data, "model=lenet", "device.channels_last=auto", "trainer.epochs=1",
                                 "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1",
                                 "trainer.checkpoint=false"), tmp_path)
    assert summary["speed"]["channels_last"] is True
    assert summary["speed"]["autotune"]["source"] == "timed" and summary["speed"]["autotune"]["file"]
    machine = summary["machine"]
    assert isinstance(machine, dict) and set(machine) >= {"host", "cpu", "cpu_count", "gpu", "cnnbench", "packages"}
    assert machine["host"] and machine["cpu"] and machine["cpu_count"] >= 1 and machine["cpus_usable"] >= 1
    assert machine["gpu"] is None  # a CPU run
    assert machine["packages"]["torch"] == torch.__version__.split("+")[0]
    assert set(machine["packages"]) >= {"torch", "torchvision", "hydra-core", "numpy"}
    if (REPO / ".git").exists():  # a git checkout (not an unpacked source archive)
        assert re.fullmatch(r"[0-9a-f]{40}", machine["cnnbench"]["commit"])
        assert isinstance(machine["cnnbench"]["dirty"], bool)
    assert json.loads((tmp_path / "summary.json").read_text())["machine"] == json.loads(json.dumps(machine))
