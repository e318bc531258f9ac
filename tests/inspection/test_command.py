"""``cnnbench inspect`` (:mod:`cnnbench.inspection.command`): Grad-CAM on the object, the run's own weights, the
files, the page in a real browser, and bad input refused before anything is written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cnnbench.cli import main
from cnnbench.evaluation.inference import load_run
from cnnbench.evaluation.predict import prepared_batch
from cnnbench.inspection.probe import cam_layer, grad_cam, probe
from cnnbench.models.stats import block_shapes
from tests.helpers import compose_fast, write_idx

pytest.importorskip("captum")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SIDE = 28


# ---- Grad-CAM finds the object: a network trained to tell "a bright square somewhere" from "noise only"


def square_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 noise; odd labels (class 1) hold an 8x8 bright square on the left or the right half.
    Returns images, labels and the side of each square (0 left, 1 right)."""
    labels = np.arange(n) % 2
    sides = rng.integers(0, 2, n)
    images = rng.integers(0, 40, size=(n, SIDE, SIDE))
    for i in np.nonzero(labels)[0]:
        row = rng.integers(2, 18)
        col = rng.integers(2, 6) if sides[i] == 0 else rng.integers(16, 20)
        images[i, row:row + 8, col:col + 8] = 240
    return images.astype(np.uint8), labels, sides


@pytest.fixture(scope="module")
def square_run(tmp_path_factory) -> Path:
    """LeNet-BN after 2 epochs on 512 such pictures (it tells them apart perfectly)."""
    from cnnbench.run.train import train

    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for split, n in (("train", 512), ("t10k", 64)):
        images, labels, _ = square_images(n, rng)
        write_idx(root / "FashionMNIST" / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(root / "FashionMNIST" / "raw" / f"{split}-labels-idx1-ubyte", labels)
    cfg = compose_fast(root, "model=lenet_bn", "optimizer.lr=0.9", "trainer.epochs=2", "trainer.batch_size=32")
    run = root / "run"
    assert train(cfg, run)["status"] == "completed"
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    return run


def test_grad_cam_puts_its_mass_on_the_side_of_the_object(square_run):
    run = load_run(square_run, device="cpu")
    images, labels, sides = square_images(40, np.random.default_rng(5))
    squares = labels == 1
    x = prepared_batch(run, torch.from_numpy(images[squares]))  # (20, 1, 28, 28)
    seen = probe(run.model, x)
    assert (seen.logits.argmax(dim=1) == 1).all()  # it sees every square
    cams = grad_cam(run.model, cam_layer(run.model, seen.shapes), x, [1] * len(x))  # (20, 28, 28)
    left = cams[:, :, : SIDE // 2].sum(dim=(1, 2)) / cams.sum(dim=(1, 2))  # share of the map's mass on the left
    on_its_side = torch.where(torch.from_numpy(sides[squares]) == 0, left, 1 - left)
    assert on_its_side.min() > 0.6 and on_its_side.mean() > 0.7, on_its_side  # measured: min 0.70, mean 0.77
    peak_col = cams.flatten(1).argmax(dim=1) % SIDE
    assert ((peak_col >= SIDE // 2).numpy() == (sides[squares] == 1)).all()


# ---- the command


def inspect_cli(run: Path, *args: str) -> int:
    return main(["inspect", str(run), "--device", "cpu", *args])


@pytest.fixture
def own_run(trained_run, tmp_path) -> Path:
    """A copy of the session's LeNet-BN run, for a test that writes into it."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def test_inspect_writes_pictures_a_page_a_record_and_tensorboard_images(own_run, capsys):
    assert inspect_cli(own_run, "--test", "Pullover", "Coat", "7", "--class", "coat") == 0
    out = own_run / "inspect"
    record = json.loads((out / "inspect.json").read_text())["runs"][0]
    summary = [b for b in block_shapes(load_run(own_run).model.cpu(), 1, SIDE) if len(b.shape) == 4]
    assert [(s["name"], tuple(s["shape"])) for s in record["stages"]] == \
        [(f"{k}. {b.name}", b.shape[1:]) for k, b in enumerate(summary, start=1)]
    assert [im["true"] for im in record["images"]][:2] == ["Pullover", "Coat"]
    assert [im["image"] for im in record["images"]][2] == "test:7"
    assert record["gradcam_layer"] == "6"  # LeNet-BN's second conv block after its sigmoid
    stages = sorted(p.name for p in (out / "stages").iterdir())
    assert stages == ["01_Conv2d.png", "02_BatchNorm2d.png", "03_Sigmoid.png", "04_AvgPool2d.png", "05_Conv2d.png",
                      "06_BatchNorm2d.png", "07_Sigmoid.png", "08_AvgPool2d.png"]
    for name in ("overview", "filters", "gradcam"):
        with Image.open(out / f"{name}.png") as im:
            assert im.mode == "RGB" and min(im.size) > 200, (name, im.size)
    page = (out / "inspect.html").read_text()
    assert "Grad-CAM: Coat" in page and page.count("<tr>") == 1 + 1 + 8 + 1 + 2  # head, input, stages, kernels, cams
    events = EventAccumulator(str(own_run), size_guidance={"images": 0}).Reload()
    assert {"inspect/overview", "inspect/filters", "inspect/gradcam"} <= set(events.Tags()["images"])
    assert "Coat" in capsys.readouterr().out


def test_inspect_sees_the_weights_predict_uses_the_ema(ema_run, tmp_path, capsys):
    """A run with an EMA: inspect's probabilities for a file are predict's (the EMA weights), not the raw ones."""
    from cnnbench.data.idx import load_mini

    picture = tmp_path / "shoe.png"
    Image.fromarray(load_mini()[1].images[0].numpy()).resize((84, 84)).save(picture)
    assert main(["predict", str(ema_run), str(picture), "--json", "--device", "cpu", "--topk", "3"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["predictions"]
    out = tmp_path / "out"
    assert inspect_cli(ema_run, str(picture), "--out", str(out), "--no-tensorboard") == 0
    got = json.loads((out / "inspect.json").read_text())["runs"][0]["images"][0]["predictions"]
    assert [p["class"] for p in got] == [p["class"] for p in expected]
    assert [p["probability"] for p in got] == pytest.approx([p["probability"] for p in expected], abs=1e-5)
    assert not list(ema_run.glob("events.out.tfevents.*inspect*"))  # --no-tensorboard, --out: the run untouched


def test_a_colour_run_reads_its_pictures_as_predict_does_and_draws_rgb_kernels(tmp_path, monkeypatch, capsys):
    """An image-folder run (3 channels): files read as its training images were, test images by class name,
    the kernels drawn in colour, and no grey-only response row."""
    from cnnbench.data.sources import settle_dataset
    from cnnbench.run.train import train
    from tests.helpers import make_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "pets", side=32)
    cfg = compose_fast("/nonexistent", "dataset=image_folder", f"dataset.path={root}", "model=lenet_bn",
                       "dataset.resize=32", "trainer.epochs=1", "trainer.batch_size=8")
    settle_dataset(cfg)
    run = tmp_path / "run"
    assert train(cfg, run)["status"] == "completed"
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    picture = root / "test" / "dog" / "000.png"
    assert main(["predict", str(run), str(picture), "--json", "--device", "cpu"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert inspect_cli(run, str(picture), "--test", "frog", "--class", "cat", "--no-tensorboard") == 0
    images = json.loads((run / "inspect" / "inspect.json").read_text())["runs"][0]["images"]
    assert [im["image"] for im in images] == [str(picture), images[1]["image"]] and images[1]["true"] == "frog"
    assert [p["probability"] for p in images[0]["predictions"]] == \
        pytest.approx([p["probability"] for p in expected], abs=1e-5)
    assert "kernels 5x5 (module 0) (RGB)" in (run / "inspect" / "inspect.html").read_text()
    assert (run / "inspect" / "filters.png").is_file()


def test_compare_puts_two_runs_side_by_side(trained_run, square_run, tmp_path):
    out = tmp_path / "out"
    assert inspect_cli(trained_run, "--compare", str(square_run), "--count", "3", "--out", str(out),
                       "--no-tensorboard") == 0
    runs = json.loads((out / "inspect.json").read_text())["runs"]
    assert [r["run_dir"] for r in runs] == [str(trained_run), str(square_run)]
    assert [im["image"] for im in runs[0]["images"]] == [im["image"] for im in runs[1]["images"]]
    assert (out / f"compare_{square_run.name}" / "overview.png").is_file()
    with Image.open(out / "side_by_side.png") as pair, Image.open(out / "overview.png") as one:
        assert pair.size[0] > 2 * one.size[0] - 10
    assert (out / "inspect.html").read_text().count('<section class="run">') == 2
    (out / "notes.txt").write_text("mine")
    assert inspect_cli(trained_run, "--count", "1", "--out", str(out), "--no-tensorboard") == 0  # no comparison now
    assert not (out / "side_by_side.png").exists() and not (out / f"compare_{square_run.name}").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only the earlier inspection's own files went


def test_the_page_is_self_contained(own_run):
    assert inspect_cli(own_run, "--count", "2", "--no-tensorboard") == 0
    page = (own_run / "inspect" / "inspect.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "default-src 'none'" in page  # and the browser may fetch nothing else


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_and_writes_nothing(own_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    (tmp_path / "notes.png").write_text("not a picture")
    assert inspect_cli(own_run, str(tmp_path / "notes.png"), "--out", str(out)) == 2
    assert error_line(capsys) == f"cnnbench inspect: error: {tmp_path / 'notes.png'}: not a readable image"

    assert inspect_cli(own_run, "--class", "Sweater", "--out", str(out)) == 2
    assert error_line(capsys).startswith("cnnbench inspect: error: the run has no class 'Sweater'; its classes: "
                                         "T-shirt/top, Trouser, Pullover")
    assert inspect_cli(own_run, "--test", "Socks", "--out", str(out)) == 2
    assert "the run has no class 'Socks'" in error_line(capsys)
    assert inspect_cli(own_run, "--test", "100000", "--out", str(out)) == 2
    assert error_line(capsys).endswith("test image 100000 does not exist: the test split has 1,000 images")

    no_checkpoint = tmp_path / "no_checkpoint"
    shutil.copytree(own_run, no_checkpoint)
    (no_checkpoint / "last.pt").unlink()
    assert inspect_cli(no_checkpoint) == 2
    assert "has no last.pt (the run saved no checkpoint" in error_line(capsys)
    assert not (no_checkpoint / "inspect").exists()

    from cnnbench.inspection import command

    def without_convolutions(*args, **kwargs):
        run = load_run(*args, **kwargs)
        run.model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 10)).eval()
        return run

    monkeypatch.setattr(command, "load_run", without_convolutions)
    assert inspect_cli(own_run, "--out", str(out)) == 2
    assert error_line(capsys) == "cnnbench inspect: error: Sequential has no convolution layer (nn.Conv2d): " \
                                 "Grad-CAM needs one"
    assert not out.exists() and not (own_run / "inspect").exists()
    assert not [p for p in own_run.glob("events.out.tfevents.*") if p.stat().st_size and "inspect" in p.name]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium")
def test_the_page_renders_in_a_real_browser_and_enlarges_a_picture(own_run, tmp_path):
    assert inspect_cli(own_run, "--test", "Pullover", "Coat", "--class", "Coat", "--no-tensorboard") == 0
    page = own_run / "inspect" / "inspect.html"
    expected = 2 * (1 + 8 + 2) + 1  # per image: input, 8 stages, 2 Grad-CAMs; the kernels once

    def browser(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'p'}",
             "--window-size=1400,1000", "--virtual-time-budget=5000", *args], capture_output=True, text=True,
            timeout=180)

    dom = browser("--dump-dom", page.as_uri()).stdout
    assert re.search(r'<body[^>]*data-images="(\d+)"', dom).group(1) == str(expected)
    assert re.search(r'<body[^>]*data-decoded="(\d+)"', dom).group(1) == str(expected)  # every picture decoded
    assert '<div id="zoom">' in dom  # closed
    dom = browser("--dump-dom", page.as_uri() + "#zoom=t0-r1-c1").stdout  # the first stage of the coat, enlarged
    zoom = re.search(r'<div id="zoom" class="open"><img alt="enlarged" src="([^"]{40})[^"]*"><p>([^<]*)</p>', dom)
    assert zoom and zoom.group(1).startswith("data:image/png;base64,") and "test #" in zoom.group(2)
    shot = tmp_path / "page.png"
    browser(f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as im:
        colours = len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0))
    assert colours > 100  # pictures drawn, not a blank page
