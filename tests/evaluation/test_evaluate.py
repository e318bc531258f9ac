"""Per-class results of a run and ``cnnbench eval``: confusion counts, hand-counted figures, a finished
run's accuracy reproduced exactly, the pictures, sweeps, the validation split, and every error path."""

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
from cnnbench.confusion import confusion_counts, most_confused, per_class_stats
from cnnbench.data import DeviceLoader, Split, load_splits
from cnnbench.data.split import split_train_val
from cnnbench.models import build_model
from cnnbench.run.loop import evaluate
from cnnbench.speed.precision import Precision
from tests.helpers import compose_fast

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


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


def test_the_confusion_picture_colours_each_cell_by_its_share_of_the_true_class():
    from PIL import Image

    from cnnbench.figures import _blue, confusion_image

    counts = np.array([[9, 1, 0], [0, 0, 10], [5, 0, 5]])  # rows: true class
    image = confusion_image(counts, ["a", "b", "c"], title="t")
    grid = np.asarray(image.convert("RGB"))  # (H, W, 3)
    # the matrix's cells are squares of one colour each; find them as the pixels of each cell's colour
    for (i, j), share in {(0, 0): 0.9, (1, 2): 1.0, (2, 0): 0.5, (0, 2): 0.0}.items():
        assert (grid == np.array(_blue(share), dtype=np.uint8)).all(axis=2).sum() > 300, (i, j)
    assert _blue(0.0) == (247, 251, 255) and _blue(1.0) == (8, 48, 107)
    assert isinstance(image, Image.Image)


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


def test_validation_split_is_stratified_seeded_and_held_out():
    labels = torch.arange(1000) % 10
    images = torch.arange(1000).view(1000, 1, 1).expand(1000, 28, 28).to(torch.int32)  # image i holds i
    train, val = split_train_val(Split(images, labels), 100, seed=1)
    assert len(train) == 900 and len(val) == 100
    assert torch.bincount(val.labels, minlength=10).tolist() == [10] * 10
    ids_train, ids_val = set(train.images[:, 0, 0].tolist()), set(val.images[:, 0, 0].tolist())
    assert not ids_train & ids_val and len(ids_train | ids_val) == 1000
    assert torch.equal(split_train_val(Split(images, labels), 100, seed=1)[1].images, val.images)
    assert not torch.equal(split_train_val(Split(images, labels), 100, seed=2)[1].images, val.images)


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


def test_a_relative_data_root_is_read_from_the_folder_the_run_started_in(trained_run, tmp_path):
    from cnnbench.evaluation.inference import read_run_config

    run = tmp_path / "run"
    shutil.copytree(trained_run / ".hydra", run / ".hydra")
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("  root: /nonexistent\n", "  root: ../shared/data\n"))
    assert read_run_config(run).dataset.root == "../shared/data"  # no Hydra record: left as it is
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    cwd: /work/project\n")
    assert read_run_config(run).dataset.root == "/work/project/../shared/data"


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
