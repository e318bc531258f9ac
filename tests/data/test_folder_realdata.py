"""The offline Fashion-MNIST copy as an image folder of PNG files: the folder and the IDX files give the
same images and the same first losses (skipped unless $CNNBENCH_DATA or ../shared/data has the copy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnbench.data import sources
from tests.helpers import compose_fast, real_data_root, write_idx

ROOT = real_data_root()
pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(ROOT is None, reason="full Fashion-MNIST not found ($CNNBENCH_DATA or ../shared/data)"),
]
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def folder_name(c: int) -> str:
    """A class folder name (a slash cannot be in one): "0_T-shirt-top"; sorted as the labels are."""
    return f"{c}_{CLASSES[c].replace('/', '-')}"


def write_png_folder(dest: Path) -> tuple[dict, dict]:
    """Fashion-MNIST's splits as dest/<split>/<class>/<index>.png (grey PNG, lossless); returns the IDX
    splits and, per split, the IDX indices in the folder's order (class by class, by index)."""
    from PIL import Image

    cfg = compose_fast(ROOT)
    _, splits = sources.read_dataset(cfg.dataset, 28)
    order = {}
    for split, data in splits.items():
        labels = data.labels.numpy()
        order[split] = np.argsort(labels, kind="stable")  # ImageFolder's order: class, then file name
        for c in range(10):
            (dest / split / folder_name(c)).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(data.images.numpy(), labels, strict=True)):
            Image.fromarray(image).save(dest / split / folder_name(int(label)) / f"{i:05d}.png")
    return splits, order


def test_png_folder_matches_the_idx_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pictures = tmp_path / "fashion_png"
    idx_splits, order = write_png_folder(pictures)
    # the same images: pixel for pixel, one channel, in ImageFolder's order
    folder_cfg = compose_fast(ROOT, "dataset=image_folder", f"dataset.path={pictures}", "dataset.normalize=false",
                              "model=lenet_bn")
    sources.settle_dataset(folder_cfg)
    assert folder_cfg.dataset.in_channels == 1 and folder_cfg.dataset.num_classes == 10
    _, folder_splits = sources.read_dataset(folder_cfg.dataset, 28)
    for split in ("train", "test"):
        assert folder_splits[split].images.shape == (len(order[split]), 1, 28, 28)
        assert torch.equal(folder_splits[split].images[:, 0], idx_splits[split].images[order[split]])
        assert torch.equal(folder_splits[split].labels, idx_splits[split].labels[order[split]])
    # the same first losses: LeNet-BN on the folder, and on IDX files holding the images in the folder's order
    raw = tmp_path / "idx" / "FashionMNIST" / "raw"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", idx_splits[split].images[order[split]].numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", idx_splits[split].labels[order[split]].numpy())
    common = ("model=lenet_bn", "optimizer.lr=0.9", "trainer.epochs=1", "trainer.batch_size=256",
              "trainer.limit_train_batches=20", "trainer.limit_eval_batches=4", "trainer.logs_per_epoch=20",
              "trainer.checkpoint=false", "device.fused_kernels=false")
    from cnnbench.run.train import train

    losses = {}
    for name, overrides in (("folder", ("dataset=image_folder", f"dataset.path={pictures}", "dataset.normalize=false")),
                            ("idx", (f"dataset.root={tmp_path / 'idx'}",))):
        summary = train(compose_fast(tmp_path / "idx", *overrides, *common), tmp_path / name)
        assert summary["status"] == "completed", summary["error"]
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["train/loss"] for r in rows if "train/loss" in r][:5]
    assert len(losses["idx"]) == 5
    assert np.allclose(losses["folder"], losses["idx"], rtol=1e-6), losses
