"""``cnnbench predict`` on pictures the tests write: upscaled, in colour, dark on light; broken files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnbench.cli import main
from cnnbench.data.idx import load_mini
from cnnbench.evaluation.inference import load_run
from cnnbench.evaluation.predict import to_dataset_style


def network_on_originals(run_dir: Path, images: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """The run's own classes and probabilities for (N, 28, 28) uint8 dataset images."""
    from cnnbench.data import Split

    run = load_run(run_dir, device="cpu")
    x, _ = next(run.loader(Split(images, torch.zeros(len(images), dtype=torch.long)), len(images)).batches(0))
    with torch.no_grad():
        probs = run.model(x).softmax(dim=1)
    return probs.argmax(dim=1).tolist(), probs


def confident_test_images(run_dir: Path, n: int) -> tuple[torch.Tensor, list[int]]:
    """``n`` test images the network classifies with probability > 0.9, one class each where possible:
    the pictures derived from them must get the same answer."""
    test = load_mini()[1]
    preds, probs = network_on_originals(run_dir, test.images)
    chosen: dict[int, int] = {}
    for i, (c, p) in enumerate(zip(preds, probs.max(dim=1).values.tolist(), strict=True)):
        if p > 0.9 and c not in chosen:
            chosen[c] = i
    index = list(chosen.values())[:n]
    assert len(index) == n
    return test.images[index], [preds[i] for i in index]


def variants(image: np.ndarray, folder: Path, stem: str) -> dict[str, Path]:
    """The picture (28, 28) uint8 four ways: upscaled 4x (PNG), in colour (JPEG), inverted to dark on
    light (BMP), and all three at once, non-square (WebP)."""
    big = Image.fromarray(image).resize((112, 112), Image.Resampling.BICUBIC)
    tint = np.asarray(big, dtype=np.float32)[..., None] * np.array([1.0, 0.75, 0.45])  # warm brown, (H, W, 3)
    colour = Image.fromarray(tint.clip(0, 255).astype(np.uint8), "RGB")
    dark_on_light = Image.fromarray(255 - np.asarray(big))
    wide = Image.new("RGB", (190, 140), (255, 255, 255))  # white paper around the object
    wide.paste(Image.fromarray(255 - np.asarray(colour)), (40, 14))
    paths = {"upscaled": folder / f"{stem}_big.png", "colour": folder / f"{stem}_colour.jpg",
             "inverted": folder / f"{stem}_dark_on_light.bmp", "all": folder / f"{stem}_photo.webp"}
    big.save(paths["upscaled"])
    colour.save(paths["colour"], quality=95)
    dark_on_light.save(paths["inverted"])
    wide.save(paths["all"], lossless=True)
    return paths


def test_predict_gives_the_networks_class_for_changed_copies_of_test_images(trained_run, tmp_path, capsys):
    images, classes = confident_test_images(trained_run, 3)
    files = {}
    for k, image in enumerate(images.numpy()):
        for kind, path in variants(image, tmp_path, f"img{k}").items():
            files[path] = (classes[k], kind)
    assert main(["predict", str(trained_run), *map(str, files), "--json", "--device", "cpu"]) == 0
    results = {Path(r["file"]): r for r in json.loads(capsys.readouterr().out)}
    names = load_run(trained_run).contract.classes
    for path, (cls, kind) in files.items():
        top = results[path]["predictions"]
        assert top[0]["class"] == names[cls], (path.name, top)
        assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
        assert results[path]["inverted"] == (kind in ("inverted", "all")), path.name


def test_a_folder_prints_one_line_per_file_and_says_when_it_inverted(trained_run, tmp_path, capsys):
    images, classes = confident_test_images(trained_run, 1)
    variants(images[0].numpy(), tmp_path, "shoe")
    (tmp_path / "notes.md").write_text("not a picture, and not an image name: skipped in a folder")
    assert main(["predict", str(trained_run), str(tmp_path), "--topk", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # four pictures; notes.md is not looked at
    name = load_run(trained_run).contract.classes[classes[0]]
    assert all(line.split(": ", 1)[1].startswith(f"{name} ") for line in lines), lines
    assert all(line.count(", ") == 1 for line in lines if "inverted" not in line)  # --topk 2
    assert sum(line.endswith("(inverted: it was dark on light)") for line in lines) == 2


def test_unreadable_files_get_one_line_each_and_the_rest_is_classified(trained_run, tmp_path, capsys):
    images, _ = confident_test_images(trained_run, 1)
    good = variants(images[0].numpy(), tmp_path, "good")["upscaled"]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:200])  # a PNG cut short
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not an image\n")
    missing = tmp_path / "missing.jpg"
    assert main(["predict", str(trained_run), str(corrupt), str(good), str(text), str(missing)]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1 and captured.out.startswith(f"{good}: ")
    assert captured.err.strip().splitlines() == [
        f"{corrupt}: error: not a readable image (image file is truncated)",
        f"{text}: error: not a readable image",
        f"{missing}: error: no such file",
    ]


def test_fitting_keeps_the_aspect_ratio_and_inverts_only_dark_on_light():
    picture = np.zeros((300, 200), dtype=np.uint8)
    picture[50:250, 80:130] = 200  # a light 200 x 50 bar on black: 4 to 1
    fitted, inverted = to_dataset_style(picture)
    rows, cols = np.nonzero(fitted > 64)
    assert not inverted and fitted.shape == (28, 28)
    assert rows.max() - rows.min() + 1 == 28 and cols.max() - cols.min() + 1 == 7  # 28 / 4
    assert fitted.max() == 255  # levels stretched from the background to the brightest pixel
    fitted_light, inverted = to_dataset_style(255 - picture)
    assert inverted and np.abs(fitted_light.astype(int) - fitted).max() <= 1


def test_predict_error_paths_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nowhere"), "x.png"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"cnnbench predict: error: run folder {tmp_path / 'nowhere'} does not exist"]


def test_predict_answers_with_the_ema_weights(ema_run, trained_run, tmp_path, capsys):
    """conftest's ema_run: trained weights in the EMA, untrained raw ones; predict gives the trained
    network's classes and probabilities."""
    images, classes = confident_test_images(trained_run, 3)
    files = []
    for i, image in enumerate(images.numpy()):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    assert main(["predict", str(ema_run), *map(str, files), "--json", "--device", "cpu"]) == 0
    answers = json.loads(capsys.readouterr().out)
    names = load_run(trained_run).contract.classes
    assert [a["predictions"][0]["class"] for a in answers] == [names[c] for c in classes]
    assert len(set(classes)) == 3  # three classes: no constant answer of an untrained network matches them
