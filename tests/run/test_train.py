"""One run (:mod:`cnnbench.run.train`) on small generated IDX files: every output file, consistent contents,
divergence, clipping, the chance warning, determinism."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench.models import build_model
from cnnbench.run.train import train
from tests.helpers import (
    assert_same_weights,
    cfg_for,
    cli,
    compose_fast,
    corrupt,
    fast_overrides,
    final_weights,
    write_fake_dataset,
)


def quick_cfg(data_root, *overrides):
    return compose_fast(data_root, "trainer.epochs=1", "trainer.batch_size=32", *overrides)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_epoch_writes_a_complete_run_folder(fake_data, tmp_path):
    run_dir = tmp_path / "run"
    summary = train(quick_cfg(fake_data, "trainer.epochs=2", "trainer.logs_per_epoch=4"), run_dir)
    assert summary["status"] == "completed"
    for name in ("summary.json", "metrics.jsonl", "last.pt"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["epochs_completed"] == 2
    for key in ("test/acc", "test/loss", "train/loss", "train/acc", "wall_time_s", "examples_per_sec",
                "params", "flops_per_image", "device", "torch_version", "cnnbench_version", "epochs"):
        assert on_disk[key] is not None, key
    assert on_disk["params"] == 61_706 and on_disk["flops_per_image"] > 0

    records = read_jsonl(run_dir / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert len(steps) == 2 * 4  # logs_per_epoch points per epoch
    assert on_disk["test/acc"] == epochs[-1]["test/acc"]
    assert on_disk["train/loss"] == pytest.approx(epochs[-1]["train/loss"])
    # No validation split (the book's way): nothing is chosen, least of all on the test set.
    assert on_disk["monitor"] is None and on_disk["best/test_acc"] is None and on_disk["best/epoch"] is None
    assert not (run_dir / "best.pt").exists()
    assert steps[-1]["step"] == epochs[-1]["step"] == summary["steps"] == 2 * 8  # 256 / 32 per epoch

    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "test/acc", "trainer/lr", "trainer/examples_per_sec"} <= tags
    assert [e.value for e in events.Scalars("test/acc")] == pytest.approx([r["test/acc"] for r in epochs])
    assert "config/text_summary" in events.Tags()["tensors"]


def test_learns_the_generated_task(fake_data, tmp_path):
    """The bars are trivially separable: a few epochs of LeNet-BN must get well above chance."""
    summary = train(quick_cfg(fake_data, "model=lenet_bn", "optimizer.lr=0.5", "trainer.epochs=4"), tmp_path)
    assert summary["status"] == "completed"
    assert summary["test/acc"] > 0.5


def test_checkpoint_loads_with_weights_only(fake_data, tmp_path):
    import torch

    train(quick_cfg(fake_data, "trainer.limit_train_batches=2"), tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 2
    assert state["config"]["model"]["name"] == "lenet"
    assert set(state["model"]) == set(build_model("lenet").state_dict())


def test_resize_and_model_kwargs_reach_the_model(fake_data, tmp_path):
    summary = train(quick_cfg(fake_data, "model=vgg11", "dataset.resize=32", "trainer.limit_train_batches=1",
                              "trainer.limit_eval_batches=1", "model.width_div=16"), tmp_path)
    assert summary["status"] == "completed" and summary["resize"] == 32
    cfg = OmegaConf.create(json.loads((tmp_path / "summary.json").read_text()))
    assert cfg.params < 43_093_322  # narrower than the registered width_div=4


def test_failure_is_recorded_not_raised(tmp_path, no_data_env):
    summary = train(compose_fast("/nonexistent"),
                    tmp_path / "run")
    assert summary["status"] == "failed"
    assert "DataError" in summary["error"] and summary["traceback"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_cli_run_and_multirun(fake_data, tmp_path):
    common = fast_overrides(fake_data, "trainer.epochs=1", "trainer.batch_size=64")
    single = subprocess.run(cli("train", *common, f"hydra.run.dir={tmp_path / 'single'}"),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    out = single.stdout + single.stderr
    assert "examples/sec on cpu" in out and "test acc" in out
    assert (tmp_path / "single" / ".hydra" / "config.yaml").is_file()
    assert "examples/sec on cpu" in (tmp_path / "single" / "train.log").read_text()  # the README's name

    sweep = tmp_path / "sweep"
    multi = subprocess.run(cli("train", "-m", "model=lenet,lenet_bn", *common, f"hydra.sweep.dir={sweep}"),
                           capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_model=lenet", "1_model=lenet_bn"]
    for job in jobs:
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed" and (sweep / job / "last.pt").is_file()
        assert summary["model"] == job.split("=")[1]


def test_diverging_learning_rate_stops_with_status_diverged(fake_data, tmp_path):
    summary = train(cfg_for(fake_data, "optimizer.lr=1e6", "trainer.epochs=3", "trainer.logs_per_epoch=8"), tmp_path)
    assert summary["status"] == "diverged"
    assert summary["diverged_at_step"] == 2  # one logging interval after the first (finite) step
    assert summary["last_finite_loss"] is not None
    assert "Try a lower learning rate than 1e+06" in summary["error"]
    assert summary["test/acc"] is None and summary["epochs_completed"] == 0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "diverged"


def test_nan_loss_is_caught_within_one_logging_interval(fake_data, tmp_path):
    summary = train(cfg_for(fake_data, "optimizer.lr=1e38", "trainer.divergence_loss=null",
                            "trainer.logs_per_epoch=8"), tmp_path)
    assert summary["status"] == "diverged"
    assert summary["diverged_at_step"] <= 3


def test_grad_clip_norm_bounds_each_step_to_the_hand_computed_norm(fake_data, tmp_path):
    """Plain SGD moves the weights by lr * g; clipped, ||g|| = clip exactly, so one step moves the whole
    parameter vector by lr * clip (the unclipped gradient of this LeNet is far larger than 0.05)."""
    def weights(name: str, *overrides: str) -> torch.Tensor:
        train(cfg_for(fake_data, "trainer.limit_train_batches=1", "trainer.epochs=1", *overrides), tmp_path / name)
        state = final_weights(tmp_path / name)
        return torch.cat([v.flatten().double() for v in state.values()])

    start = weights("start", "optimizer.lr=1e-30")  # a step this small leaves every float32 weight as it is
    free = weights("free", "optimizer.lr=1.0")
    clipped = weights("clipped", "optimizer.lr=1.0", "trainer.grad_clip_norm=0.05")
    assert torch.linalg.vector_norm(free - start) > 0.5  # unclipped: ten times the clip and more
    assert float(torch.linalg.vector_norm(clipped - start)) == pytest.approx(1.0 * 0.05, rel=1e-4)


def test_chance_level_warning(fake_data, tmp_path):
    summary = train(cfg_for(fake_data, "optimizer.lr=1e-6", "trainer.epochs=2", "trainer.chance_patience=2"), tmp_path)
    assert summary["status"] == "completed"
    assert any("chance level" in w for w in summary["warnings"])


def test_a_run_on_corrupt_data_fails_without_claiming_success(tmp_path):
    root = write_fake_dataset(tmp_path / "data", n_train=64, n_test=32)
    corrupt(root, "t10k-images-idx3-ubyte", lambda b: b[:1000])
    summary = train(cfg_for(root, "trainer.epochs=1"), tmp_path / "run")
    assert summary["status"] == "failed" and "truncated" in summary["error"]
    assert not (tmp_path / "run" / "last.pt").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_deterministic_runs_are_identical(fake_data, tmp_path):
    a = train(cfg_for(fake_data, "trainer.epochs=2", "model=lenet_bn", "trainer.seed=7"), tmp_path / "a")
    train(cfg_for(fake_data, "trainer.epochs=2", "model=lenet_bn", "trainer.seed=7"), tmp_path / "b")
    assert a["seed"] == 7 and a["deterministic"] is True
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"), atol=0)
    def strip(p: Path) -> list[dict]:  # the records without their timings
        return [{k: v for k, v in json.loads(line).items() if "throughput" not in k and "time" not in k}
                for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")
    c = train(cfg_for(fake_data, "trainer.epochs=2", "model=lenet_bn", "trainer.seed=8"), tmp_path / "c")
    assert c["train/loss"] != a["train/loss"]
