"""Honest model selection: the validation split, best.pt, early stopping, resume, the book's figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import cnnbench.run.callbacks as callbacks_module
from cnnbench.cli import main
from cnnbench.config import compose_config
from cnnbench.data.idx import Split
from cnnbench.data.split import class_quotas, split_train_val
from cnnbench.run.build import build_run
from cnnbench.run.loop import EvalResult
from cnnbench.run.train import train
from tests.helpers import compose_fast, write_idx

N_TRAIN, N_TEST = 300, 60


@pytest.fixture(scope="module")
def numbered_data(tmp_path_factory) -> Path:
    """Fake Fashion-MNIST whose every training image carries its own index in its first two pixels,
    so a batch tells which examples it holds; classes of unequal sizes (stratification is visible)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("numbered")
    raw = root / "FashionMNIST" / "raw"
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        labels = np.minimum(np.arange(n) * 10 // n + (np.arange(n) % 7 == 0), 9)  # uneven class sizes
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 4 + 2 * c: 6 + 2 * c, 4:24] = 230  # a bar whose row tells the class
        images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


def image_ids(x: torch.Tensor) -> set[int]:
    """The indices written into the first two pixels of (B, 1, 28, 28) batches in [0, 1]."""
    pixels = (x[:, 0, 0, :2] * 255).round().long()  # (B, 2)
    return set((pixels[:, 0] * 256 + pixels[:, 1]).tolist())


# ------------------------------------------------------------------------------------------ the split


def test_split_is_stratified_exact_and_disjoint():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    split = Split(torch.arange(100, dtype=torch.uint8).view(100, 1, 1).expand(100, 28, 28).contiguous(), labels)
    train_part, val = split_train_val(split, val_size=10, seed=3)
    assert torch.bincount(val.labels).tolist() == [5, 3, 2]  # 10% of each class, exactly
    assert torch.bincount(train_part.labels).tolist() == [45, 27, 18]
    ids_val = set(val.images[:, 0, 0].tolist())
    ids_train = set(train_part.images[:, 0, 0].tolist())
    assert not ids_val & ids_train and len(ids_val | ids_train) == 100
    # the same seed holds out the same images whatever torch's global RNG did; another seed others
    torch.manual_seed(123)
    assert torch.equal(split_train_val(split, 10, 3)[1].images, val.images)
    assert not torch.equal(split_train_val(split, 10, 4)[1].images, val.images)


def test_quotas_sum_exactly_with_largest_remainders():
    assert class_quotas(torch.tensor([6000] * 10), 5000).tolist() == [500] * 10
    assert class_quotas(torch.tensor([5, 3, 2]), 7).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4 -> floors 3, 2, 1 + 1
    assert int(class_quotas(torch.tensor([7, 11, 13, 17]), 9).sum()) == 9


def test_no_validation_image_in_any_training_batch(numbered_data, tmp_path):
    cfg = compose_fast(numbered_data, "dataset.val_size=50", "trainer.batch_size=32")
    run = build_run(cfg, tmp_path)
    seen = [image_ids(x) for epoch in (0, 1) for x, _ in run.train_loader.batches(epoch)]
    train_ids = set().union(*seen)
    val_ids = set().union(*(image_ids(x) for x, _ in run.val_loader.batches(0)))
    assert len(val_ids) == 50 and len(train_ids) == N_TRAIN - 50 and not train_ids & val_ids
    expected = class_quotas(torch.bincount(run.train_loader.labels.new_tensor(
        torch.cat([run.train_loader.labels, run.val_loader.labels]).tolist()), minlength=10), 50)
    assert torch.bincount(run.val_loader.labels, minlength=10).tolist() == expected.tolist()


def test_same_split_across_training_seeds(numbered_data, tmp_path):
    """trainer.seed changes the training order, never which images are held out: sweeps over seeds
    compare on one validation set."""
    held = []
    for seed in (0, 1):
        run = build_run(compose_fast(numbered_data, "dataset.val_size=50", f"trainer.seed={seed}",
                                     "trainer.batch_size=32"), tmp_path)
        held.append(set().union(*(image_ids(x) for x, _ in run.val_loader.batches(0))))
    assert held[0] == held[1]
    other = build_run(compose_fast(numbered_data, "dataset.val_size=50", "dataset.val_seed=1",
                                   "trainer.batch_size=32"), tmp_path)
    assert set().union(*(image_ids(x) for x, _ in other.val_loader.batches(0))) != held[0]


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


# ------------------------------------------------------------------------------------------- the book


def test_a_book_recipe_gets_the_books_figures_beside_it():
    from cnnbench.book.results import book_comparison, published

    cfg = compose_config(["experiment=d2l_lenet"])
    editions = published()["d2l_lenet"]["editions"]
    losses = [e["train_loss"] for e in editions.values()]
    accs = [e["train_acc"] for e in editions.values()]
    tests = [e["test_acc"] for e in editions.values()]
    summary = {"status": "completed", "train/loss": min(losses) - 0.02, "train/acc": max(accs) + 0.005,
               "test/acc": max(tests) + 0.02}
    book = book_comparison(cfg, summary)
    assert book["recipe"] == "d2l_lenet" and book["reproduced"] is True
    assert book["test_acc"]["position"] == "above" and book["test_acc"]["book"] == [min(tests), max(tests)]
    worse = book_comparison(cfg, {**summary, "train/loss": max(losses) + 0.05, "test/acc": min(tests) - 0.01})
    assert worse["reproduced"] is False and worse["train_loss"]["ok"] is False
    assert worse["test_acc"]["position"] == "below"
    # Not the recipe any more (another rate, a validation split, another dataset): no comparison
    for change in ("optimizer.lr=0.5", "dataset.val_size=5000", "dataset=mnist", "trainer.epochs=3"):
        assert book_comparison(compose_config(["experiment=d2l_lenet", change]), summary) is None, change
    assert book_comparison(compose_config(["experiment=d2l_lenet", "device=fast", "trainer.seed=3"]),
                           summary) is not None  # device and seed are not part of the recipe
    # A run recorded before the network's knobs existed is the book's network; a knob set otherwise is not
    old = compose_config(["experiment=d2l_lenet"])
    old.model = OmegaConf.create({"name": "lenet"})
    assert book_comparison(old, summary)["recipe"] == "d2l_lenet"
    assert book_comparison(compose_config(["experiment=d2l_lenet", "model.pooling=max"]), summary) is None


def test_every_book_recipe_has_both_editions_and_sources():
    from cnnbench.book.results import published
    from cnnbench.commands.bench import book_recipes

    assert sorted(published()) == sorted(book_recipes())
    for recipe, entry in published().items():
        assert set(entry["editions"]) == {"classic_v0.17", "zh_v2.0.0"}, recipe
        for edition in entry["editions"].values():
            assert edition["source"].startswith("http"), recipe
            assert 0 < edition["train_loss"] < 2.5
            assert 0.1 < edition["train_acc"] <= 1 and 0.1 < edition["test_acc"] <= 1


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
