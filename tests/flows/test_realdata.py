"""The book's accuracy on the full Fashion-MNIST (skipped unless $CNNBENCH_DATA or ../shared/data has it)."""

from __future__ import annotations

import pytest

from cnnbench.run.train import train
from tests.helpers import compose_fast, real_data_root

ROOT = real_data_root()
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(ROOT is None, reason="full Fashion-MNIST not found ($CNNBENCH_DATA or ../shared/data)"),
]


def run_recipe(experiment: str, tmp_path, *overrides: str) -> dict:
    cfg = compose_fast(ROOT, f"experiment={experiment}", "trainer.checkpoint=false", *overrides)
    summary = train(cfg, tmp_path / experiment)
    assert summary["status"] == "completed", summary["error"]
    return summary


def test_d2l_lenet_reproduces_the_book(tmp_path):
    """D2L 6.6 reports loss 0.47, train acc 0.82, test acc about 0.8 after 10 epochs."""
    s = run_recipe("d2l_lenet", tmp_path)
    assert 0.78 <= s["test/acc"] <= 0.84
    assert abs(s["train/loss"] - 0.47) <= 0.03
    assert s["book"]["recipe"] == "d2l_lenet" and s["book"]["reproduced"] is True, s["book"]


def test_d2l_lenet_bn_reproduces_the_book(tmp_path):
    """D2L 8.5 reports test accuracy of about 0.83-0.87 for the batch-normalized LeNet."""
    s = run_recipe("d2l_lenet_bn", tmp_path)
    assert s["test/acc"] >= 0.83
    assert s["book"]["recipe"] == "d2l_lenet_bn" and s["book"]["reproduced"] is True, s["book"]
