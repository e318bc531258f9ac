"""The book's reference pipeline (cnnbench.book) on a tiny Fashion-MNIST look-alike, on the CPU."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnbench import book
from cnnbench.models import build_model

N_TRAIN, N_TEST = 64, 32
EXPECTED_KEYS = {"train/loss", "train/acc", "test/acc", "examples_per_sec_book", "wall_time_s",
                 "examples", "epochs"}


def _write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array as an IDX file: magic 0x00000803 (N, 28, 28 images) or 0x00000801 (N labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = 0x00000800 | array.ndim
    with path.open("wb") as f:
        f.write(struct.pack(f">{array.ndim + 1}i", magic, *array.shape))  # big-endian int32 header
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _write_tiny_fashion_mnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """Four IDX files under ``root/FashionMNIST/raw``; each class is a bright stripe at its own rows."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)  # (n,)
        images = rng.integers(0, 50, size=(n, 28, 28)).astype(np.uint8)  # (n, 28, 28) noise
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c : 4 + 2 * c, 3:25] = 240
        raw = root / "FashionMNIST" / "raw"
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return _write_tiny_fashion_mnist(tmp_path_factory.mktemp("book_data"))


def _check_result(result: dict, epochs: int, examples: int) -> None:
    assert EXPECTED_KEYS <= set(result)
    assert 0.0 <= result["train/acc"] <= 1.0
    assert 0.0 <= result["test/acc"] <= 1.0
    assert math.isfinite(result["train/loss"]) and result["train/loss"] > 0
    assert result["examples_per_sec_book"] > 0
    assert result["wall_time_s"] > 0
    assert result["epochs"] == epochs
    assert result["examples"] == examples


def test_loader_native_size(tiny_root: Path) -> None:
    train_iter, test_iter = book.load_data_fashion_mnist(16, root=tiny_root, num_workers=0)
    X, y = next(iter(train_iter))
    assert X.shape == (16, 1, 28, 28) and X.dtype == torch.float32
    assert 0.0 <= float(X.min()) and float(X.max()) <= 1.0
    assert y.shape == (16,) and y.dtype == torch.int64
    assert len(train_iter.dataset) == N_TRAIN and len(test_iter.dataset) == N_TEST


def test_loader_resize(tiny_root: Path) -> None:
    train_iter, test_iter = book.load_data_fashion_mnist(8, resize=32, root=tiny_root, num_workers=0)
    X, _ = next(iter(train_iter))
    assert X.shape == (8, 1, 32, 32)
    X, _ = next(iter(test_iter))
    assert X.shape == (8, 1, 32, 32)


def test_train_ch6_lenet_one_epoch(tiny_root: Path) -> None:
    torch.manual_seed(0)
    train_iter, test_iter = book.load_data_fashion_mnist(16, root=tiny_root, num_workers=0)
    net = build_model("lenet", in_channels=1, num_classes=10, image_size=28)
    result = book.train_ch6(net, train_iter, test_iter, num_epochs=1, lr=0.9, device="cpu")
    _check_result(result, epochs=1, examples=N_TRAIN)
    assert result["device"] == "cpu"


def test_train_ch6_resized_with_workers_and_max_batches(tiny_root: Path) -> None:
    """The resize path through real DataLoader workers; max_batches caps each epoch."""
    torch.manual_seed(0)
    train_iter, test_iter = book.load_data_fashion_mnist(8, resize=32, root=tiny_root, num_workers=2)
    net = build_model("lenet", in_channels=1, num_classes=10, image_size=32)
    result = book.train_ch6(net, train_iter, test_iter, num_epochs=2, lr=0.5, device=torch.device("cpu"),
                            max_batches=3, max_eval_batches=2)
    _check_result(result, epochs=2, examples=2 * 3 * 8)


def test_init_weights_is_xavier_on_exact_types() -> None:
    lin, conv = torch.nn.Linear(400, 300), torch.nn.Conv2d(3, 8, 5)
    for m in (lin, conv):
        torch.nn.init.zeros_(m.weight)
        book.init_weights(m)
    bound = math.sqrt(6.0 / (400 + 300))  # xavier_uniform_ bound for the Linear
    assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.5 * bound
    assert conv.weight.abs().max() > 0

    class MyLinear(torch.nn.Linear):  # a subclass is left alone, as type(m) == nn.Linear implies
        pass

    sub = MyLinear(4, 4)
    torch.nn.init.zeros_(sub.weight)
    book.init_weights(sub)
    assert float(sub.weight.detach().abs().sum()) == 0.0


def test_accuracy_counts_correct() -> None:
    y_hat = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    y = torch.tensor([0, 1, 1])
    assert book.accuracy(y_hat, y) == 2.0


def test_cli_writes_json(tiny_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "book.json"
    rc = book.main(["--model", "lenet", "--epochs", "1", "--lr", "0.9", "--batch-size", "32",
                    "--root", str(tiny_root), "--device", "cpu", "--num-workers", "0", "--seed", "0",
                    "--json", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    _check_result(written, epochs=1, examples=N_TRAIN)
    assert written["model"] == "lenet" and written["image_size"] == 28


def test_peak_matmul_flops_positive() -> None:
    flops = book.peak_matmul_flops(torch.device("cpu"), n=256, iters=2, repeats=2)
    assert flops > 0 and math.isfinite(flops)
