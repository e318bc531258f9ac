"""logger=wandb (:mod:`cnnbench.tracking.wandb_tracker`): an offline W&B run beside the run folder, read back
from its own files (no account, no network): the same records as metrics.jsonl, at the same steps."""

from __future__ import annotations

import json

import pytest

from cnnbench.run.train import train
from tests.helpers import compose_fast, finished_wandb_records

pytest.importorskip("wandb")
pytestmark = pytest.mark.slow  # W&B starts its own service process: seconds

FAST = ("model=lenet", "trainer.epochs=2", "trainer.batch_size=64", "trainer.limit_train_batches=2",
        "trainer.logs_per_epoch=2")


def _items(items) -> dict:
    """{key: value} of a record's items (a key is in ``key`` or, newer files, in ``nested_key``)."""
    return {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_offline_run_holds_the_runs_records(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # the run folder is given explicitly
    run_dir = tmp_path / "run"
    summary = train(compose_fast(fake_data, "logger=wandb", "logger.tags=[smoke]", *FAST), run_dir)
    assert summary["status"] == "completed" and summary["warnings"] == []
    records = finished_wandb_records(run_dir)  # W&B's service may still be writing it
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "cnnbench" and run.display_name == "run" and list(run.tags) == ["smoke"]
    config = _items(run.config.update)
    assert config["model"]["name"] == "lenet" and config["trainer"]["epochs"] == 2
    history: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            history.setdefault(int(r.history.step.num), {}).update(_items(r.history.item))
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for rec in jsonl:  # every metrics.jsonl record, at its step, with its values
        got = history[rec["step"]]
        for key in ("train/loss", "test/acc", "lr"):
            if key in rec:
                assert got[key] == pytest.approx(rec[key]), (rec, got)
    assert {"test/acc", "train/loss"} <= set(history[summary["steps"]])
    final = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            final.update(_items(r.summary.update))
    assert final["status"] == "completed" and final["test/acc"] == pytest.approx(summary["test/acc"])
