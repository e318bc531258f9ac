"""Honest model selection (:mod:`cnnbench.run.selection`): best.pt, early stopping, resume, the monitored metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cnnbench.run.callbacks as callbacks_module
from cnnbench.cli import main
from cnnbench.run.loop import EvalResult
from cnnbench.run.train import train
from tests.helpers import compose_fast

# ------------------------------------------------------------------------------- selection, stopping


def scripted_validation(monkeypatch, accuracies: list[float]) -> list[float]:
    """Make the validation split score ``accuracies`` at successive evaluations (the test split is
    evaluated for real), to drive selection and early stopping exactly; returns the test accuracies."""
    real = callbacks_module.evaluate
    calls = {"val": 0}
    tests: list[float] = []

    def evaluate(model, loader, precision, limit=None, dist_ctx=None, **kwargs):
        result = real(model, loader, precision, limit, dist_ctx, **kwargs) if dist_ctx else real(
            model, loader, precision, limit, **kwargs)
        if loader.shuffle is False and loader.num_examples == 40:  # the 40-image validation split
            acc = accuracies[calls["val"]]
            calls["val"] += 1
            return EvalResult(acc=acc, loss=1 - acc, examples=result.examples)
        tests.append(result.acc)
        return result

    monkeypatch.setattr(callbacks_module, "evaluate", evaluate)
    return tests


SELECTION = ["model=lenet", "dataset.val_size=40", "trainer.batch_size=32", "trainer.deterministic=true",
             "optimizer.lr=0.5"]


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_best_pt_holds_the_best_epoch_by_validation(fake_data, tmp_path, monkeypatch):
    tests = scripted_validation(monkeypatch, [0.5, 0.8, 0.6, 0.7])
    summary = train(compose_fast(fake_data, *SELECTION, "trainer.epochs=4"), tmp_path / "run")
    assert summary["monitor"] == "val/acc" and summary["best/epoch"] == 2
    assert summary["best/val_acc"] == 0.8 and summary["best/test_acc"] == tests[1]  # that checkpoint's test acc
    assert summary["val/acc"] == 0.7 and summary["test/acc"] == tests[3]  # the final epoch, reported apart
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    monkeypatch.undo()
    train(compose_fast(fake_data, *SELECTION, "trainer.epochs=2"), tmp_path / "two")
    two = weights(tmp_path / "two" / "last.pt")
    assert all(torch.equal(best["model"][k], two[k]) for k in two)  # the weights of epoch 2, exactly
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/acc"] for r in records if r["kind"] == "epoch"] == [0.5, 0.8, 0.6, 0.7]


def test_early_stopping_stops_and_says_why(fake_data, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [0.5, 0.6, 0.65, 0.6, 0.62, 0.9, 0.9])
    summary = train(compose_fast(fake_data, *SELECTION, "trainer.epochs=7", "trainer.early_stopping.patience=2",
                                 "trainer.early_stopping.min_delta=0.1"), tmp_path)
    # 0.6 and 0.65 improve on 0.5 by less than 0.1: two evaluations without a real improvement
    assert summary["status"] == "completed" and summary["stopped_early"] is True
    assert summary["epochs_completed"] == 3 and summary["epochs"] == 7
    assert summary["best/epoch"] == 3 and summary["best/val_acc"] == 0.65  # best.pt still follows any gain
    assert summary["stop_reason"] == ("early stopping: val/acc did not improve by more than 0.1 in 2 evaluations; "
                                      "best 0.6500 at epoch 3")


def test_resume_keeps_best_checkpoint_and_early_stopping_state(fake_data, tmp_path):
    """A run stopped after 2 epochs and resumed to 5 ends like one never stopped: same best.pt, same
    last.pt, same selection figures, same early-stopping count."""
    common = [*SELECTION, "trainer.early_stopping.patience=9"]
    whole = train(compose_fast(fake_data, *common, "trainer.epochs=5"), tmp_path / "whole")
    train(compose_fast(fake_data, *common, "trainer.epochs=2"), tmp_path / "parts")
    resumed = train(compose_fast(fake_data, *common, "trainer.epochs=5", "trainer.resume=auto"), tmp_path / "parts")
    for key in ("best/epoch", "best/val_acc", "best/test_acc", "val/acc", "test/acc", "stop_reason"):
        assert resumed[key] == whole[key], key
    for name in ("best.pt", "last.pt"):
        a, b = weights(tmp_path / "whole" / name), weights(tmp_path / "parts" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = lambda d: torch.load(d / "last.pt", weights_only=True)["run_state"]  # noqa: E731
    assert state(tmp_path / "parts")["evals_since_best"] == state(tmp_path / "whole")["evals_since_best"]
    assert whole["best/epoch"] < 5  # the case worth testing: the best epoch is not the last one


def test_monitoring_the_test_set_warns_once(fake_data, tmp_path):
    summary = train(compose_fast(fake_data, "trainer.monitor=test/acc", "trainer.epochs=2",
                                 "trainer.batch_size=32"), tmp_path)
    assert summary["monitor"] == "test/acc" and summary["best/epoch"] in (1, 2)
    warnings = [w for w in summary["warnings"] if "selects the checkpoint on the test set" in w]
    assert len(warnings) == 1


@pytest.mark.parametrize("overrides,message", [
    (["dataset.val_size=-5"], "dataset.val_size must be an integer >= 0, got -5"),
    (["dataset.val_size=256"], "dataset.val_size=256 leaves no training examples (256 examples"),
    (["trainer.monitor=val/acc"], "trainer.monitor=val/acc needs a validation split: set dataset.val_size"),
    (["trainer.monitor=train/acc"], "trainer.monitor must be auto, null or one of val/acc, val/loss"),
    (["trainer.early_stopping.patience=3"], "trainer.early_stopping needs a monitored metric"),
    (["dataset.val_size=10", "trainer.early_stopping.patience=0"],
     "trainer.early_stopping.patience must be a positive integer, got 0"),
])
def test_bad_selection_settings_are_refused_before_anything_runs(fake_data, tmp_path, capsys, overrides, message):
    out = tmp_path / "run"
    args = [f"dataset.root={fake_data}", "dataset.download=false", "device=cpu", "trainer.batch_size=32", *overrides]
    assert main(["train", *args, f"hydra.run.dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()


# ------------------------------------------------------- ties, losses, target accuracy (issue 23 found)


def test_an_evaluation_that_only_ties_the_best_is_no_improvement(fake_data, tmp_path, monkeypatch):
    """min_delta 0 (the default): a tie neither moves best.pt nor resets early stopping's count."""
    scripted_validation(monkeypatch, [0.5, 0.5, 0.5, 0.9])
    summary = train(compose_fast(fake_data, *SELECTION, "trainer.epochs=4", "trainer.early_stopping.patience=2"),
                    tmp_path)
    assert summary["stopped_early"] is True and summary["epochs_completed"] == 3
    assert summary["best/epoch"] == 1 and summary["best/val_acc"] == 0.5
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1


def test_a_monitored_loss_is_minimized(fake_data, tmp_path, monkeypatch):
    # scripted losses are 1 - acc: 0.5, 0.2, 0.4, 0.3 -> the best is epoch 2's 0.2
    scripted_validation(monkeypatch, [0.5, 0.8, 0.6, 0.7])
    summary = train(compose_fast(fake_data, *SELECTION, "trainer.epochs=4", "trainer.monitor=val/loss",
                                 "trainer.early_stopping.patience=2"), tmp_path)
    assert summary["monitor"] == "val/loss" and summary["best/epoch"] == 2
    assert summary["best/val_loss"] == pytest.approx(0.2)
    assert summary["epochs_completed"] == 4  # 0.4 and 0.3 are no improvement on 0.2: patience 2 not reached
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2


def test_target_accuracy_is_judged_on_the_monitored_validation_accuracy(fake_data, tmp_path, monkeypatch):
    """With a validation split the target is reached on val/acc, not on the test set: here the
    validation accuracy reaches it at epoch 2, long before the small network's test accuracy could."""
    tests = scripted_validation(monkeypatch, [0.4, 0.95, 0.96])
    summary = train(compose_fast(fake_data, *SELECTION, "trainer.epochs=3", "trainer.target_acc=0.9"), tmp_path)
    assert summary["epochs_completed"] == 2 and max(tests) < 0.9
    assert summary["stop_reason"].startswith("reached trainer.target_acc=0.9: val/acc 0.9500 at epoch 2")
