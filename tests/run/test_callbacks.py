"""The epoch loop's callbacks (:mod:`cnnbench.run.callbacks`): their saved state, the order they run in, and
the step callbacks as a list."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import cnnbench.run.callbacks as callbacks_module
from cnnbench.models.configured import model_from_config
from cnnbench.run import callbacks as cb
from cnnbench.run.loop import EvalResult, LoopHooks, evaluate, train_one_epoch
from cnnbench.run.state import RunState
from cnnbench.run.train import train
from cnnbench.speed.precision import Precision
from tests.helpers import built, compose_fast, quick


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
    from tests.helpers import built

    run = built(compose_fast(fake_data, "model=lenet", "trainer.batch_size=64"), tmp_path)
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


def test_resume_with_augmentation_and_ema_equals_an_uninterrupted_run(fake_data, tmp_path):
    extra = ["augment=strong", "trainer.ema.decay=0.9", "trainer.label_smoothing=0.1"]
    train(quick(fake_data, *extra, "trainer.epochs=3"), tmp_path / "whole")
    train(quick(fake_data, *extra, "trainer.epochs=1"), tmp_path / "parts")
    resumed = train(quick(fake_data, *extra, "trainer.epochs=3", "trainer.resume=auto"), tmp_path / "parts")
    assert resumed["status"] == "completed"
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    parts = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert whole[part] is not None and parts[part] is not None, f"no {part} in the checkpoint"
        assert all(torch.equal(whole[part][k], parts[part][k]) for k in whole[part]), part


def test_ema_is_the_hand_computed_average(fake_data, tmp_path):
    """AveragedModel's EMA: the first step copies the weights, each later one e = d*e + (1-d)*w."""
    decay = 0.8
    weights = []
    for steps in (1, 2, 3):  # the trained weights after 1, 2 and 3 steps (deterministic runs)
        train(quick(fake_data, "trainer.epochs=1", f"trainer.limit_train_batches={steps}"), tmp_path / str(steps))
        weights.append(torch.load(tmp_path / str(steps) / "last.pt", weights_only=True)["model"])
    train(quick(fake_data, "trainer.epochs=1", "trainer.limit_train_batches=3", f"trainer.ema.decay={decay}"),
          tmp_path / "ema")
    ema = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)["ema"]
    for key in weights[0]:
        expected = weights[0][key]
        for w in weights[1:]:
            expected = decay * expected + (1 - decay) * w[key]
        assert torch.allclose(ema[f"module.{key}"], expected, atol=1e-6), key


def test_ema_weights_are_what_is_evaluated(fake_data, tmp_path):
    """test/acc is the EMA's, raw/test/acc the trained weights': each recomputed here from last.pt, on a
    run that learns (LeNet-BN), so that the two really differ."""
    from cnnbench.evaluation.inference import reported_weights

    cfg = compose_fast("/nonexistent", "dataset=fashion_mnist_mini", "model=lenet_bn", "trainer.batch_size=64",
                       "optimizer.lr=0.9", "trainer.epochs=2",
                       "trainer.limit_train_batches=20", "trainer.ema.decay=0.9")
    summary = train(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "epoch"][-1]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    test_loader = built(cfg, tmp_path / "probe").test_loader
    scores = {}
    for name, weights in (("ema", reported_weights(state)), ("raw", state["model"])):
        model = model_from_config(cfg)
        model.load_state_dict(weights)
        scores[name] = evaluate(model.eval(), test_loader, Precision.create("fp32", torch.device("cpu")))
    assert summary["test/acc"] == last["test/acc"] == pytest.approx(scores["ema"].acc, abs=1e-12)
    assert last["raw/test/acc"] == pytest.approx(scores["raw"].acc, abs=1e-12)
    assert last["test/loss"] == pytest.approx(scores["ema"].loss, rel=1e-5)
    assert abs(scores["ema"].acc - scores["raw"].acc) > 0.01 and min(scores["ema"].acc, scores["raw"].acc) > 0.3


def test_target_accuracy_stops_at_the_epoch_that_reaches_it(fake_data, tmp_path, monkeypatch):
    scripted = iter([0.5, 0.7, 0.93, 0.99, 0.99])
    real = callbacks_module.evaluate

    def evaluate_scripted(model, loader, *args, **kwargs):
        result = real(model, loader, *args, **kwargs)
        return EvalResult(acc=next(scripted), loss=result.loss, examples=result.examples)

    monkeypatch.setattr(callbacks_module, "evaluate", evaluate_scripted)
    summary = train(quick(fake_data, "trainer.epochs=5", "trainer.target_acc=0.9"), tmp_path)
    assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    assert summary["stop_reason"].startswith("reached trainer.target_acc=0.9: test/acc 0.9300 at epoch 3")
    assert 0 < summary["time_to_target_s"] <= summary["wall_time_s"]
