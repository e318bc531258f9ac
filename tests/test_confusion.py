"""Confusion counts and per-class figures (:mod:`cnnbench.confusion`): the matrix of an evaluation, and figures
against a hand count."""

from __future__ import annotations

import pytest
import torch

from cnnbench.confusion import confusion_counts, most_confused, per_class_stats
from cnnbench.data import DeviceLoader, load_splits
from cnnbench.models import build_model
from cnnbench.run.loop import evaluate
from cnnbench.speed.precision import Precision
from tests.helpers import compose_fast


def test_confusion_matrix_sums_to_the_test_set_and_its_diagonal_is_the_accuracy(fake_data):
    test = load_splits(compose_fast(fake_data)).test
    loader = DeviceLoader(test, 50, torch.device("cpu"), shuffle=False)  # 128 = 50 + 50 + 28: a short last batch
    torch.manual_seed(0)
    result = evaluate(build_model("lenet_bn").eval(), loader, Precision.create("fp32", torch.device("cpu")),
                      num_classes=10)
    m = result.confusion
    assert m.shape == (10, 10) and m.dtype == torch.int64
    assert int(m.sum()) == len(test) == result.examples
    assert m.trace().item() / m.sum().item() == pytest.approx(result.acc, abs=1e-12)
    assert m.sum(dim=1).tolist() == torch.bincount(test.labels, minlength=10).tolist()  # rows: true classes
    fp32 = Precision.create("fp32", torch.device("cpu"))
    assert evaluate(build_model("lenet_bn").eval(), loader, fp32).confusion is None


def test_per_class_figures_match_a_hand_count():
    # 3 classes, 8 examples: true a a a b b c c c, predicted a a b b c c c a
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    m = confusion_counts(labels, preds, 3)
    assert m.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    stats = per_class_stats(m, ["a", "b", "c"])
    # a: 2 of 3 right (recall 2/3); predicted a 3 times, 2 right (precision 2/3)
    assert stats["a"]["recall"] == pytest.approx(2 / 3) and stats["a"]["precision"] == pytest.approx(2 / 3)
    # b: 1 of 2 right; predicted b twice, once right
    assert stats["b"]["recall"] == pytest.approx(1 / 2) and stats["b"]["precision"] == pytest.approx(1 / 2)
    # c: 2 of 3 right; predicted c 3 times, 2 right; F1 = 2pr/(p+r) = 2/3
    assert stats["c"]["f1"] == pytest.approx(2 / 3) and stats["c"]["accuracy"] == pytest.approx(2 / 3)
    assert [s["support"] for s in stats.values()] == [3, 2, 3]
    pairs = most_confused(m, ["a", "b", "c"], k=5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "b", 1), ("b", "c", 1), ("c", "a", 1)]
    assert pairs[0]["share_of_true"] == pytest.approx(1 / 3)
