"""``cnnbench eval`` (:mod:`cnnbench.evaluation.evaluate`) and a run's per-class results: a finished run's accuracy
reproduced exactly, the pictures, sweeps, the validation split, the EMA weights, and every error path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench.cli import main
from cnnbench.models import build_model
from tests.helpers import compose_fast

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def test_a_run_ends_with_per_class_accuracy_and_a_confusion_image(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    per_class = summary["test/per_class_acc"]
    assert per_class is not None, "the summary has no per-class accuracy"
    assert list(per_class) == FASHION
    # the mini sample's test split has 100 images per class: the per-class mean is the accuracy
    assert np.mean(list(per_class.values())) == pytest.approx(summary["test/acc"], abs=1e-9)
    confusion = torch.load(trained_run / "last.pt", weights_only=True)["run_state"]["test_confusion"]
    assert np.asarray(confusion).sum() == 1000
    events = EventAccumulator(str(trained_run), size_guidance={"images": 0}).Reload()
    assert "vis/confusion_test" in events.Tags()["images"]
    picture = events.Images("vis/confusion_test")[-1]
    assert picture.width > 400 and picture.height > 400  # ten named rows and columns


def test_eval_reproduces_the_runs_own_test_accuracy_and_writes_its_files(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    record = json.loads((run / "eval" / "test.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert record["accuracy"] == summary["test/acc"]  # exactly: same weights, batches and preparation
    assert record["examples"] == 1000 and record["top3_accuracy"] >= record["accuracy"]
    counts = np.asarray(record["confusion_matrix"]["counts"])
    assert counts.sum() == 1000 and counts.trace() / 1000 == pytest.approx(record["accuracy"])
    assert list(record["per_class"]) == FASHION
    assert record["most_confused"][0]["count"] == counts[~np.eye(10, dtype=bool)].max()
    assert len(record["mistakes_shown"]) == 16
    probs = [m["probability"] for m in record["mistakes_shown"]]
    assert probs == sorted(probs, reverse=True) and all(m["true"] != m["predicted"] for m in record["mistakes_shown"])
    assert f"accuracy {record['accuracy']:.4f}" in out and "Ankle boot" in out
    for name in ("test_confusion.png", "test_mistakes.png"):
        assert_picture(run / "eval" / name)
    events = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert {"vis/eval_test_confusion", "vis/eval_test_mistakes"} <= set(events.Tags()["images"])
    assert sum(t.startswith("pr_test/") for t in events.Tags()["tensors"]) == 10  # a PR curve per class


def assert_picture(path: Path) -> None:
    """A PNG of real content: a few kilobytes and many grey levels, not a blank canvas."""
    from PIL import Image

    assert path.stat().st_size > 10_000, path
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert len(np.unique(pixels)) > 50 and pixels.std() > 20


def test_eval_of_a_sweep_folder_evaluates_each_job_and_reports_a_broken_one(trained_run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for job in ("0_model=lenet_bn", "1_model=lenet_bn"):
        shutil.copytree(trained_run, sweep / job)
    (sweep / "1_model=lenet_bn" / "last.pt").unlink()
    assert main(["eval", str(sweep), "--device", "cpu", "--no-tensorboard"]) == 1
    out = capsys.readouterr().out
    assert (sweep / "0_model=lenet_bn" / "eval" / "test.json").is_file()
    assert not (sweep / "1_model=lenet_bn" / "eval").exists()
    assert [line for line in out.splitlines() if "error:" in line] == [
        f"{sweep / '1_model=lenet_bn'}: error: {sweep / '1_model=lenet_bn'} has no last.pt (the run saved no "
        "checkpoint: trainer.checkpoint=false, or it failed before its first epoch ended)"]
    assert "1 of 2 runs evaluated" in out


def test_eval_on_the_validation_split_held_out_of_training(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("val_size: 0\n", "val_size: 500\n", 1)
                      .replace("val_seed: 0\n", "val_seed: 3\n", 1))
    assert main(["eval", str(run), "--split", "val", "--device", "cpu", "--no-tensorboard"]) == 0
    record = json.loads((run / "eval" / "val.json").read_text())
    assert record["split"] == "val" and record["examples"] == 500
    assert all(s["support"] == 50 for s in record["per_class"].values())  # stratified: 6,000 = 600 per class
    assert (run / "eval" / "val_confusion.png").is_file()


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_eval_error_paths_are_one_line_and_exit_2(trained_run, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert error_line(capsys) == f"cnnbench eval: error: run folder {tmp_path / 'nowhere'} does not exist"

    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "is not a cnnbench run folder (no .hydra/config.yaml) and holds none" in error_line(capsys)

    assert main(["eval", str(trained_run), "--checkpoint", "best"]) == 2
    assert error_line(capsys).endswith(f"{trained_run} has no best.pt: it is written only by runs with a "
                                       "validation split (dataset.val_size > 0); use --checkpoint last")

    assert main(["eval", str(trained_run), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert error_line(capsys).endswith(f"checkpoint {tmp_path / 'missing.pt'} does not exist")

    other = torch.load(trained_run / "last.pt", weights_only=True)
    other["config"]["model"]["name"] = "resnet18"
    other["model"] = build_model("resnet18").state_dict()
    torch.save(other, tmp_path / "resnet18.pt")
    assert main(["eval", str(trained_run), "--checkpoint", str(tmp_path / "resnet18.pt")]) == 2
    assert error_line(capsys).endswith(f"checkpoint {tmp_path / 'resnet18.pt'} holds a 'resnet18' network, "
                                       "but the run trains 'lenet_bn'")

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", str(trained_run), "--checkpoint", str(tmp_path / "garbage.pt")]) == 2
    assert "is corrupt or truncated" in error_line(capsys)

    assert main(["eval", str(trained_run), "--split", "val"]) == 2
    assert error_line(capsys).endswith("the run has no validation split (dataset.val_size is 0); "
                                       "evaluate it with --split test")
    assert not (trained_run / "eval").exists()  # no failed call wrote anything into the run


def test_eval_uses_the_ema_weights_a_run_reported(fake_data, tmp_path):
    """A run with trainer.ema.decay reports its EMA's test accuracy: eval reproduces it, not the raw one's."""
    from cnnbench.run.train import train


    run = tmp_path / "ema"
    summary = train(compose_fast(fake_data, "model=lenet", "trainer.batch_size=32", "trainer.epochs=2",
                                 "trainer.ema.decay=0.9", "optimizer.lr=0.5"), run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_fast(
        fake_data, "model=lenet", "trainer.batch_size=32", "trainer.epochs=2", "trainer.ema.decay=0.9",
        "optimizer.lr=0.5")))
    assert main(["eval", str(run), "--device", "cpu", "--no-tensorboard"]) == 0
    record = json.loads((run / "eval" / "test.json").read_text())
    assert record["accuracy"] == summary["test/acc"]


def test_eval_scores_the_ema_weights_not_the_raw_ones(ema_run, trained_run):
    """The run's EMA holds trained weights and its raw weights are untrained (conftest's ema_run): eval
    must reproduce the trained network's accuracy, far above chance."""
    assert main(["eval", str(ema_run), "--device", "cpu", "--no-tensorboard"]) == 0
    record = json.loads((ema_run / "eval" / "test.json").read_text())
    reported = json.loads((trained_run / "summary.json").read_text())["test/acc"]
    assert record["accuracy"] == reported and reported > 0.4
