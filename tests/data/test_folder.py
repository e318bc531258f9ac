"""Image folders: the listing (as torchvision's ImageFolder), decoding (grey, colour, palette, channels),
the cache, every bad input's one sentence before a run folder exists, and a run through train, eval and
predict with the folder's class names."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnbench.config import compose_config
from cnnbench.data import folder as folder_mod
from cnnbench.data import sources
from cnnbench.data.folder import decode_image, list_folder, load_folder
from cnnbench.errors import ConfigError, DataError
from tests.helpers import CLASSES, fast_overrides, make_folder, picture


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    """Every test decodes into its own cache root, and forgets what earlier tests read."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    sources._READ.clear()
    yield
    sources._READ.clear()


# ------------------------------------------------------------------------------------------- listing


def _odd_folder(root: Path) -> Path:
    """A folder with a nested sub-folder, an upper-case suffix, a text file and a hidden file."""
    make_folder(root, n_train=2, n_test=1)
    (root / "train" / "dog" / "nested").mkdir()
    Image.new("L", (12, 12)).save(root / "train" / "dog" / "nested" / "A.PNG")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "train" / "cat" / "._000.png").write_bytes(b"\0")  # macOS's resource fork beside a copied file
    return root


def test_listing_order(tmp_path):
    """Classes sorted, files sorted per class, sub-folders recursed, only image suffixes, no hidden files."""
    listing = list_folder(str(_odd_folder(tmp_path / "f")))
    assert listing.classes == list(CLASSES)
    assert listing.files["train"] == [("train/cat/000.png", 0), ("train/cat/001.png", 0), ("train/dog/000.png", 1),
                                      ("train/dog/001.png", 1), ("train/dog/nested/A.PNG", 1),
                                      ("train/frog/000.png", 2), ("train/frog/001.png", 2)]


@pytest.mark.slow  # importing torchvision costs 2-6 s
def test_listing_is_torchvisions(tmp_path):
    """Same extensions, classes, files and order as torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = _odd_folder(tmp_path / "f")
    (root / "train" / "cat" / "._000.png").unlink()  # which ImageFolder would keep (and fail to read)
    listing = list_folder(str(root))
    ours = [(str(root / rel), label) for rel, label in listing.files["train"]]
    assert folder_mod.IMG_EXTENSIONS == IMG_EXTENSIONS
    assert listing.classes == ImageFolder(str(root / "train")).classes == list(CLASSES)
    assert ours == ImageFolder(str(root / "train")).samples
    assert "val" not in listing.files


# ------------------------------------------------------------------------------------------ decoding


def test_decode_grey_colour_palette(tmp_path):
    rng = np.random.default_rng(1)
    colour = picture(2, rng)
    grey = picture(1, rng, colour=False)
    Image.fromarray(colour).save(tmp_path / "c.png")
    Image.fromarray(grey).save(tmp_path / "grey_as_rgb.png")  # an RGB file of a grey picture
    Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(grey[..., 0]).save(tmp_path / "g.bmp")
    a, is_colour = decode_image(str(tmp_path / "c.png"), None, None)
    assert is_colour and a.shape == (3, 12, 12) and (a == colour.transpose(2, 0, 1)).all()
    a, is_colour = decode_image(str(tmp_path / "grey_as_rgb.png"), None, None)
    assert not is_colour and a.shape == (1, 12, 12) and (a[0] == grey[..., 0]).all()
    a, is_colour = decode_image(str(tmp_path / "p.png"), None, None)
    assert is_colour and a.shape == (3, 12, 12)
    a, _ = decode_image(str(tmp_path / "g.bmp"), 3, None)  # grey repeated on three channels
    assert a.shape == (3, 12, 12) and (a == grey[..., 0]).all()
    a, _ = decode_image(str(tmp_path / "c.png"), 1, (6, 8))  # Pillow's luma, resized to 6 x 8
    expected = np.asarray(Image.fromarray(colour).convert("L").resize((8, 6), Image.Resampling.BILINEAR))
    assert a.shape == (1, 6, 8) and (a[0] == expected).all()


@pytest.mark.parametrize(("colour", "channels", "expected"), [(True, None, 3), (False, None, 1), (True, 1, 1),
                                                              (False, 3, 3)])
def test_channels_auto_or_fixed(tmp_path, colour, channels, expected):
    data = load_folder(str(make_folder(tmp_path / "f", colour=colour)), channels, 28)
    assert data.channels == expected
    assert data.splits["train"].images.shape == (24, expected, 12, 12)
    assert data.splits["train"].labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8


def test_mixed_sizes_stored_at_the_run_side(tmp_path):
    root = make_folder(tmp_path / "f")
    Image.new("RGB", (30, 20), (200, 10, 10)).save(root / "train" / "cat" / "big.png")
    data = load_folder(str(root), None, 16)
    assert data.splits["train"].images.shape[1:] == (3, 16, 16)
    assert data.splits["test"].images.shape[1:] == (3, 16, 16)
    small, _ = decode_image(str(root / "test" / "dog" / "001.png"), None, (16, 16))  # as if read at 16 px
    assert torch.equal(data.splits["test"].images[5], torch.from_numpy(small))
    again = load_folder(str(root), None, 16)  # the sizes are recorded: the cache is found
    assert torch.equal(again.splits["train"].images, data.splits["train"].images)
    assert len(list((tmp_path / "xdg-cache").rglob("*.pt"))) == 1


def test_big_pictures_stored_at_the_run_side(tmp_path, monkeypatch):
    """One size for all, but larger than the run's side: stored at the side, not at full size; shrunk as
    they are read, so a first decode never holds the full pictures."""
    root = make_folder(tmp_path / "f", side=40)
    seen = []
    resized = folder_mod._resized
    monkeypatch.setattr(folder_mod, "_resized", lambda a, size: seen.append(a.shape) or resized(a, size))
    assert load_folder(str(root), None, 16).splits["train"].images.shape[1:] == (3, 16, 16)
    assert seen and all(max(shape[1:]) <= 16 for shape in seen)
    assert load_folder(str(root), None, 64).splits["train"].images.shape[1:] == (3, 40, 40)


def test_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "f")
    first = load_folder(str(root), None, 28)
    cached = list((tmp_path / "xdg-cache" / "cnnbench" / "image_folders").glob("*.pt"))
    assert len(cached) == 1
    assert not [p for p in root.rglob("*") if p.suffix in (".pt", ".json")]  # nothing in the user's folder

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the files did not change")

    monkeypatch.setattr(folder_mod, "decode_folder", no_decoding)
    again = load_folder(str(root), None, 28)
    assert torch.equal(again.splits["train"].images, first.splits["train"].images)
    touched = root / "train" / "cat" / "000.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes, newer
    with pytest.raises(AssertionError, match="decoded again"):
        load_folder(str(root), None, 28)
    (root / "test" / "dog" / "003.png").unlink()  # a file fewer
    with pytest.raises(AssertionError, match="decoded again"):
        load_folder(str(root), None, 28)


def test_decoding_in_worker_processes_gives_the_same_tensors(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "f", n_train=4, n_test=2)
    serial = load_folder(str(root), None, 28)
    monkeypatch.setattr(folder_mod, "SERIAL_BELOW", 1)
    for path in (tmp_path / "xdg-cache").rglob("*.pt"):
        path.unlink()
    pooled = load_folder(str(root), None, 28, workers=2)
    assert torch.equal(serial.splits["train"].images, pooled.splits["train"].images)
    assert torch.equal(serial.splits["test"].labels, pooled.splits["test"].labels)


# --------------------------------------------------------------------------------------- bad inputs


def _damage(root: Path) -> Path:
    bad = root / "train" / "dog" / "001.png"
    bad.write_bytes(bad.read_bytes()[:-60])  # truncated: its last chunks are gone
    return bad


def test_unreadable_image_skipped_with_a_warning_naming_it(tmp_path, caplog):
    root = make_folder(tmp_path / "f")
    bad = _damage(root)
    (root / "test" / "cat" / "zz.jpg").write_text("not a jpeg")
    with caplog.at_level(logging.WARNING, logger="cnnbench.data.folder"):
        data = load_folder(str(root), None, 28)
    assert len(data.splits["train"]) == 23 and len(data.splits["test"]) == 12
    warning = next(r.getMessage() for r in caplog.records if "skipped" in r.getMessage())
    assert "skipped 2 unreadable image(s)" in warning and str(bad.relative_to(root)) in warning
    assert "test/cat/zz.jpg" in warning


def test_unreadable_image_refused_with_on_bad_image_error(tmp_path):
    root = make_folder(tmp_path / "f")
    bad = _damage(root)
    with pytest.raises(DataError, match=f"{bad}: cannot be read .*dataset.on_bad_image=skip"):
        load_folder(str(root), None, 28, on_bad_image="error")


def _no_images(root: Path) -> None:
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)


def _empty_class(root: Path) -> None:
    make_folder(root)
    (root / "train" / "horse").mkdir()


def _test_class_not_in_train(root: Path) -> None:
    make_folder(root)
    make_folder(root, splits=("test",), classes=("cat", "dog", "frog", "zebra"))


def _val_class_not_in_train(root: Path) -> None:
    make_folder(root)
    make_folder(root, splits=("val",), classes=("cat", "unicorn"))


def _mixed_channels(root: Path) -> None:
    make_folder(root, splits=("train",))
    make_folder(root, splits=("test",), colour=False)


def _flat_folder(root: Path) -> None:
    make_folder(root / "x")
    (root / "x" / "train").rename(root / "cat")


BAD_INPUTS = {  # how to make it, the message's words
    "missing path": (None, "dataset.path {root} does not exist"),
    "a file": (lambda r: r.write_text("x"), "is a file, not a folder"),
    "no train folder": (_flat_folder, r"has no train/ folder \(found: cat, x\)"),
    "no images at all": (_no_images, "holds no images at all"),
    "empty class folder": (_empty_class, "train: empty class folder horse"),
    "test class missing from train": (_test_class_not_in_train, "test has class folder zebra that .* does not have"),
    "val class missing from train": (_val_class_not_in_train, "val has class folder unicorn that"),
    "mixed channel counts": (_mixed_channels, "mixed channel counts: train hold colour images but every image of "
                                              "test is grey; set dataset.channels=3"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_sentence(tmp_path, case):
    make, words = BAD_INPUTS[case]
    root = tmp_path / "pictures"
    if make is not None:
        make(root)
    with pytest.raises(DataError) as info:
        load_folder(str(root), None, 28)
    import re

    assert re.search(words.format(root=re.escape(str(root))), str(info.value)), str(info.value)
    assert "\n" not in str(info.value)


def test_bad_input_refused_before_a_run_folder_exists(tmp_path, capsys, monkeypatch):
    """The command line: exit 2, one line naming the class, no run folder."""
    from cnnbench.cli import main

    root = tmp_path / "pictures"
    _test_class_not_in_train(root)
    run_dir = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code = main(["train", "dataset=image_folder", f"dataset.path={root}", "device=cpu", f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not run_dir.exists()
    assert len(err.splitlines()) == 1 and "zebra" in err and err.startswith("cnnbench train: error:")


def test_path_not_set_is_a_config_error():
    cfg = compose_config(["dataset=image_folder", "device=cpu"])
    from cnnbench.run.validate import check_values

    with pytest.raises(ConfigError, match="dataset.path is not set: dataset=image_folder needs dataset.path=ROOT"):
        check_values(cfg)


# -------------------------------------------------------------------------------------- the config


def _cfg(root: Path, *extra: str):
    return compose_config(fast_overrides("/nonexistent", "dataset=image_folder", f"dataset.path={root}",
                                         "model=lenet_bn", *extra))


def test_settle_writes_what_the_data_says(tmp_path):
    root = make_folder(tmp_path / "f")
    make_folder(root, splits=("val",), n_test=2)
    cfg = _cfg(root)
    sources.settle_dataset(cfg)
    d = cfg.dataset
    assert (d.in_channels, d.num_classes, list(d.classes), d.val_size) == (3, 3, list(CLASSES), 6)
    assert d.name == "f"  # the folder's name, for summaries, reports and TensorBoard
    train = sources.load_splits(cfg).train.images
    expected = (train.double() / 255).mean(dim=(0, 2, 3))
    assert np.allclose(list(d.mean), expected.tolist(), atol=1e-5)
    assert np.allclose(list(d.std), (train.double() / 255).std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-5)
    splits = sources.load_splits(cfg)
    assert len(splits.val) == 6 and len(splits.train) == 24  # val/ is the validation split, train/ stays whole
    sources.settle_dataset(cfg)  # idempotent
    with pytest.raises(ConfigError, match="has a val/ folder .* leave dataset.val_size at 0"):
        sources.settle_dataset(_cfg(root, "dataset.val_size=3"))
    with pytest.raises(ConfigError, match="dataset.num_classes=5 but .* has 3 classes"):
        sources.settle_dataset(_cfg(root, "dataset.num_classes=5"))
    with pytest.raises(ConfigError, match="dataset.mean has 3 values but the images of .* have 1 channel"):
        sources.settle_dataset(_cfg(root, "dataset.channels=1", "dataset.mean=[0.1,0.2,0.3]", "dataset.std=0.3"))


def test_images_added_during_a_session_are_read(tmp_path):
    """In one process (a notebook, an in-process sweep) the data read is reused until the folder changes."""
    root = make_folder(tmp_path / "f")
    cfg = _cfg(root)
    assert len(sources.load_splits(cfg).train) == 24
    Image.fromarray(picture(0, np.random.default_rng(3))).save(root / "train" / "cat" / "new.png")
    assert len(sources.load_splits(cfg).train) == 25


def test_per_channel_normalization_reaches_the_batches(tmp_path):
    from cnnbench.data import DeviceLoader
    from cnnbench.data.loader import normalization

    root = make_folder(tmp_path / "f")
    cfg = _cfg(root)
    sources.settle_dataset(cfg)
    train = sources.load_splits(cfg).train
    loader = DeviceLoader(train, 24, torch.device("cpu"), resize=12, shuffle=False,
                          normalize=normalization(cfg.dataset))
    x, _ = next(loader.batches(0))
    assert x.shape == (24, 3, 12, 12)
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


# ------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """LeNet-BN trained a few steps on a 3-class colour folder, its settled config recorded as the
    command line records it."""
    from omegaconf import OmegaConf

    from cnnbench.run.train import train

    base = tmp_path_factory.mktemp("colour")
    root = make_folder(base / "pictures", n_train=16, n_test=6)
    cfg = compose_config(fast_overrides("/nonexistent", "dataset=image_folder", f"dataset.path={root}",
                                        "model=lenet_bn", "trainer.epochs=3", "trainer.batch_size=16",
                                        "optimizer.lr=0.5", "device.fused_kernels=false"))
    summary = train(cfg, base / "run")
    assert summary["status"] == "completed", summary["error"]
    (base / "run" / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, base / "run" / ".hydra" / "config.yaml")
    return base / "run", root, summary


def test_train_eval_predict_name_the_folder_classes(colour_run, capsys):
    from cnnbench.evaluation.evaluate import evaluate_run
    from cnnbench.evaluation.inference import load_run
    from cnnbench.evaluation.predict import cmd_predict

    run_dir, root, summary = colour_run
    assert summary["test/acc"] >= 0.6
    run = load_run(run_dir, device="cpu")
    assert run.contract.classes == list(CLASSES) and run.contract.channels == 3 and not run.contract.mnist_style
    assert len(run.contract.normalize[0]) == 3
    record, paths = evaluate_run(run_dir, "last", "test", "cpu", None, tensorboard=False)
    assert list(record["per_class"]) == list(CLASSES) and record["examples"] == 18
    assert paths["mistakes"].is_file()
    code = cmd_predict([str(run_dir), str(root / "test" / "frog" / "000.png"), "--device", "cpu", "--topk", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "frog" in out and "inverted" not in out


def test_predict_reads_pictures_as_the_training_images(colour_run):
    """No inversion, no cropping: the same tensor the test split holds (at the stored size)."""
    from cnnbench.evaluation.inference import load_run
    from cnnbench.evaluation.predict import load_picture

    run_dir, root, _ = colour_run
    run = load_run(run_dir, device="cpu")
    p = load_picture(root / "test" / "dog" / "002.png", run)
    side = run.contract.side
    expected = Image.open(root / "test" / "dog" / "002.png").convert("RGB").resize((side, side),
                                                                                  Image.Resampling.BILINEAR)
    assert not p.inverted and p.image.shape == (3, side, side)
    assert (p.image == np.asarray(expected).transpose(2, 0, 1)).all()


def test_colour_mistakes_grid(tmp_path):
    from cnnbench.figures import close, mistakes_figure

    images = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    images[:, 0] = 255  # red
    fig = mistakes_figure(images, ["a", "b"], ["b", "a"], [0.9, 0.8])
    shown = fig.axes[0].get_images()[0].get_array()
    assert shown.shape == (8, 8, 3) and shown[0, 0].tolist() == [255, 0, 0]
    close(fig)


def test_augmentation_on_three_channels():
    from cnnbench.data.augment import Augment

    aug = Augment(flip=1.0, crop_padding=0, erase=1.0, erase_scale=(0.25, 0.25), erase_ratio=(1.0, 1.0))
    x = torch.rand(4, 3, 8, 8)
    out = aug.apply(x, aug.draw(4, 8, Augment.generator(0, 0, 0)))
    erased = out == 0
    assert out.shape == x.shape
    assert torch.equal(erased[:, 0], erased[:, 1]) and torch.equal(erased[:, 1], erased[:, 2])  # every channel
    assert erased.any()


def test_eval_data_root_moves_the_image_folder(colour_run, tmp_path):
    """--data-root names the folder's new place; the relative dataset.path of a command-line run is anchored
    at the folder it was started from."""
    import shutil

    from omegaconf import OmegaConf

    from cnnbench.evaluation.evaluate import evaluate_run
    from cnnbench.evaluation.inference import read_run_config, with_data_root

    run_dir, root, _ = colour_run
    moved = shutil.copytree(root, tmp_path / "moved")
    record, _ = evaluate_run(run_dir, "last", "test", "cpu", str(moved), tensorboard=False)
    assert record["examples"] == 18
    assert with_data_root(read_run_config(run_dir), str(moved)).dataset.path == str(moved)
    copy = shutil.copytree(run_dir, tmp_path / "run")
    cfg = OmegaConf.load(copy / ".hydra" / "config.yaml")
    cfg.dataset.path = "moved"
    OmegaConf.save(cfg, copy / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(tmp_path)}}}, copy / ".hydra" / "hydra.yaml")
    assert read_run_config(copy).dataset.path == str(moved)


def test_export_contract_of_a_colour_run(colour_run, capsys):
    """The export's input contract: 3 RGB channels at the run's side, per-channel normalization, the folder's
    classes, pictures as they are; checked on the folder's own test images."""
    import json

    from cnnbench.evaluation.export import cmd_export
    from cnnbench.evaluation.inference import load_run

    run_dir, _, _ = colour_run
    assert cmd_export([str(run_dir), "--format", "torchscript"]) == 0
    side = load_run(run_dir, device="cpu").contract.side
    contract = json.loads((run_dir / "export" / "lenet_bn.torchscript.pt.json").read_text())
    assert contract["input"] == f"float32 (batch, 3, {side}, {side})" and contract["channels"] == "RGB"
    assert len(contract["normalize"]["mean"]) == 3 and contract["classes"] == list(CLASSES)
    assert contract["convention"].startswith("pictures as they are")
    assert "the first 18 test images" in capsys.readouterr().out
