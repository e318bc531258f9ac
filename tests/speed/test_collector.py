"""The garbage collector in a ``cnnbench`` command (:mod:`cnnbench.speed.collector`): paused while ``train`` starts,
its start's garbage collected once, the rest frozen, and the collector on again from the first epoch."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("command, paused", [("train", True), ("eval", False)])
def test_the_console_script_pauses_the_collector_while_a_train_command_starts(monkeypatch, command, paused) -> None:
    """cli.run turns the garbage collector off before main for ``train`` only (cnnbench.speed.collector: the
    start's full collections walk every object torch's imports made)."""
    import gc

    import cnnbench.cli as cli_module
    from cnnbench.speed import collector

    seen = {}

    def fake_main() -> int:
        seen["enabled"] = gc.isenabled()
        return 0

    monkeypatch.setattr(cli_module, "main", fake_main)
    monkeypatch.setattr("sys.argv", ["cnnbench", command])
    try:
        with pytest.raises(SystemExit):
            cli_module.run()
        assert seen["enabled"] is not paused
    finally:
        collector.resume()
        gc.enable()
        gc.unfreeze()


def test_resume_collects_the_starts_garbage_freezes_the_rest_and_turns_the_collector_back_on() -> None:
    import gc
    import weakref

    from cnnbench.speed import collector

    class Node:
        pass

    assert collector.resume() is False and gc.isenabled()  # never paused: nothing happens
    gc.unfreeze()
    collector.pause()
    try:
        assert not gc.isenabled()
        cycle = Node()
        cycle.me = cycle  # cyclic garbage made during the start
        dead = weakref.ref(cycle)
        del cycle
        alive = Node()
        assert dead() is not None  # no collector: the cycle stays
        assert collector.resume() is True
        assert gc.isenabled()
        assert dead() is None  # collected before the freeze, not frozen with the rest
        assert gc.get_freeze_count() > 1000 and alive is not None
        assert collector.resume() is False  # once per pause
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_first_epoch_resumes_a_paused_collector(fake_data, tmp_path) -> None:
    import gc

    from cnnbench.run.train import train
    from cnnbench.speed import collector
    from tests.helpers import compose_fast

    gc.unfreeze()
    collector.pause()
    try:
        summary = train(compose_fast(fake_data, "trainer.epochs=1", "trainer.batch_size=64"), tmp_path / "run")
        assert summary["status"] == "completed"
        assert gc.isenabled() and gc.get_freeze_count() > 1000
    finally:
        collector.resume()
        gc.enable()
        gc.unfreeze()
