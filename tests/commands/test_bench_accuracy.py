"""``cnnbench bench --to-accuracy`` (:mod:`cnnbench.commands.bench_accuracy`): the time each recipe takes to an
accuracy, beside the book's own loop."""

from __future__ import annotations

import json


def test_bench_times_recipes_to_an_accuracy_beside_the_books_loop(fake_data, tmp_path):
    from cnnbench.commands.bench import cmd_bench

    out = tmp_path / "bench"
    assert cmd_bench(["d2l_lenet_bn", "--to-accuracy", "0.3", "--data-root", str(fake_data), "--device", "cpu",
                      "--book-workers", "0", "--out", str(out), "--override", "trainer.epochs=4",
                      "--override", "trainer.batch_size=32", "--override", "optimizer.lr=0.5"]) == 0
    result = json.loads((out / "bench_accuracy.json").read_text())
    ours, book = result["rows"]
    assert ours["recipe"] == "d2l_lenet_bn" and book["pipeline"] == "book" and result["target"] == 0.3
    for row in (ours, book):
        if row["reached"]:
            assert 0 < row["time_to_target_s"] <= row["wall_time_s"] and 1 <= row["epochs"] <= row["max_epochs"]
        else:
            assert row["time_to_target_s"] is None and row["test/acc"] < 0.3
    assert ours["reached"] and ours["epochs"] < 4  # the bars are easy: well before the last epoch
    assert "| d2l_lenet_bn | yes |" in (out / "bench_accuracy.md").read_text()
