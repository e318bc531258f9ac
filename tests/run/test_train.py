"""One-epoch runs on small generated IDX files: every output file, consistent contents."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench.models import build_model
from cnnbench.run.train import train
from tests.helpers import cli, compose_fast, fast_overrides


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


def test_deterministic_kernels_are_set_both_ways_in_one_process() -> None:
    """seed_everything skips torch.use_deterministic_algorithms when nothing changes (the call imports
    torch._inductor); an in-process run after a deterministic one must still get the fast kernels back."""
    from cnnbench.run.build import seed_everything

    try:
        seed_everything(0, True)
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(0, False)
        assert not torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False, warn_only=True)
        seed_everything(0, False)
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
