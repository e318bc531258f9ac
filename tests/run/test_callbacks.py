"""The epoch loop's callbacks (:mod:`cnnbench.run.callbacks`): their saved state, the order they run in, and
the step callbacks as a list."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from cnnbench.run import callbacks as cb
from cnnbench.run.loop import LoopHooks, train_one_epoch
from cnnbench.run.state import RunState
from cnnbench.run.train import train
from tests.helpers import compose_fast


def test_state_dict_is_the_fields_a_callback_owns():
    run = SimpleNamespace(state=RunState(best_epoch=3, best_value=0.8, chance_epochs=2))
    selection, chance = cb.Selection(run), cb.ChanceWarning(run)
    assert selection.state_dict() == {"best_epoch": 3, "best_value": 0.8, "best_eval": {}, "evals_since_best": 0,
                                      "stop_reason": None}
    assert chance.state_dict() == {"chance_epochs": 2}
    other = SimpleNamespace(state=RunState())
    cb.ChanceWarning(other).load_state_dict(chance.state_dict())
    cb.Selection(other).load_state_dict(selection.state_dict())
    assert (other.state.chance_epochs, other.state.best_epoch, other.state.best_value) == (2, 3, 0.8)


def test_every_step_callback_runs_after_every_step(fake_data, tmp_path):
    """``after_step`` is a list: each entry is called once per optimizer step."""
    from cnnbench.run.build import build_run

    run = build_run(compose_fast(fake_data, "model=lenet", "trainer.batch_size=64"), tmp_path)
    calls = {"a": 0, "b": 0}
    hooks = LoopHooks(after_step=[lambda: calls.__setitem__("a", calls["a"] + 1),
                                  lambda: calls.__setitem__("b", calls["b"] + 1)])
    out = train_one_epoch(run.model, run.train_loader, run.optimizer, run.scheduler, run.precision, epoch=0,
                          global_step=0, hooks=hooks, limit_batches=3)
    assert out.step == 3 and calls == {"a": 3, "b": 3}


def test_an_added_callback_sees_each_epochs_end_after_the_evaluation(fake_data, tmp_path, monkeypatch):
    """A new concern is one class in the list: it gets each epoch's record, evaluated first."""
    seen: list[tuple[int, bool, bool]] = []

    class Probe(cb.Callback):
        def on_epoch_end(self, end: cb.EpochEnd) -> None:
            seen.append((end.epoch, end.evaluated, "test/acc" in end.record))

    real = cb.epoch_callbacks
    monkeypatch.setattr("cnnbench.run.train.epoch_callbacks", lambda run, rlog: [*real(run, rlog), Probe(run)])
    summary = train(compose_fast(fake_data, "model=lenet", "trainer.epochs=3", "trainer.eval_every=2",
                                 "trainer.batch_size=64", "trainer.limit_train_batches=2"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert seen == [(1, False, False), (2, True, True), (3, True, True)]
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 3
