"""The book's reference pipeline (cnnbench.book.pipeline) on a tiny Fashion-MNIST look-alike, on the CPU."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnbench.book import pipeline as book
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


def _test_images(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The tiny test split's (N, 28, 28) uint8 images and (N,) labels, read back from its IDX files."""
    raw = root / "FashionMNIST" / "raw"
    images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    return images, labels


def test_loader_native_size(tiny_root: Path) -> None:
    train_iter, test_iter = book.load_data_fashion_mnist(16, root=tiny_root, num_workers=0)
    X, y = next(iter(train_iter))
    assert X.shape == (16, 1, 28, 28) and X.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert len(train_iter.dataset) == N_TRAIN and len(test_iter.dataset) == N_TEST
    images, labels = _test_images(tiny_root)
    X, y = next(iter(test_iter))  # the test split is not shuffled: its first 16 images, as ToTensor scales them
    assert torch.equal(X[:, 0], torch.from_numpy(images[:16]).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels[:16]).long())


def test_loader_resize(tiny_root: Path) -> None:
    from PIL import Image
    from torchvision.transforms import functional

    train_iter, test_iter = book.load_data_fashion_mnist(8, resize=32, root=tiny_root, num_workers=0)
    X, _ = next(iter(train_iter))
    assert X.shape == (8, 1, 32, 32)
    X, _ = next(iter(test_iter))
    images, _ = _test_images(tiny_root)
    # the book's transform: PIL image -> Resize(32) (bilinear) -> ToTensor, one image at a time
    expected = torch.stack([functional.to_tensor(functional.resize(Image.fromarray(im), 32)) for im in images[:8]])
    assert X.shape == (8, 1, 32, 32) and torch.equal(X, expected)


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


# ------------------------------------------------- train_ch6 against a hand-computed reference

PIXELS, CLASSES = 28 * 28, 10


def _linear_net() -> torch.nn.Sequential:
    """Softmax regression: (B, 1, 28, 28) -> flatten (B, 784) -> logits (B, 10)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(PIXELS, CLASSES))


def _striped_batches(sizes: list[int], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed (X, y) batches, X: (B, 1, 28, 28) float32 in [0, 1] (noise + a stripe at the class's rows)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in sizes:
        y = torch.randint(0, CLASSES, (b,), generator=g)  # (B,) int64
        X = 0.2 * torch.rand(b, 1, 28, 28, generator=g)  # (B, 1, 28, 28)
        for i, c in enumerate(y.tolist()):
            X[i, 0, 2 + 2 * c : 4 + 2 * c, 3:25] = 0.9
        batches.append((X, y))
    return batches


def _sgd_by_hand(W: torch.Tensor, b: torch.Tensor, train: list, test: list, epochs: int,
                 lr: float) -> tuple[torch.Tensor, torch.Tensor, float, float, float]:
    """The book's loop for softmax regression, in float64 with the analytic cross-entropy gradient.

    W: (10, 784), b: (10,). Per batch: p = softmax(X W^T + b) (B, 10); loss = mean(-log p[y]);
    grad_W = (p - onehot)^T X / B (10, 784); grad_b = sum over the batch of (p - onehot) / B (10,).
    The loss and the correct count of a batch are taken from the logits *before* its update, and
    summed per epoch as loss * B and correct, then divided by the epoch's examples (the last epoch's
    are returned). Returns (W, b, train loss, train acc, test acc).
    """
    W, b = W.double().clone(), b.double().clone()
    for _ in range(epochs):
        loss_sum = correct = examples = 0.0
        for X, y in train:
            x = X.reshape(len(y), -1).double()  # (B, 784)
            z = x @ W.T + b  # (B, 10) logits
            p = torch.softmax(z, dim=1)  # (B, 10)
            loss_sum += float(-torch.log(p[torch.arange(len(y)), y]).mean()) * len(y)
            correct += float((z.argmax(dim=1) == y).sum())
            examples += len(y)
            g = (p - torch.nn.functional.one_hot(y, CLASSES).double()) / len(y)  # (B, 10)
            W -= lr * (g.T @ x)
            b -= lr * g.sum(dim=0)
        train_loss, train_acc = loss_sum / examples, correct / examples
    test_correct = sum(float(((X.reshape(len(y), -1).double() @ W.T + b).argmax(1) == y).sum())
                       for X, y in test)
    test_acc = test_correct / sum(len(y) for _, y in test)
    return W, b, train_loss, train_acc, test_acc


def test_train_ch6_matches_hand_computed_sgd_steps() -> None:
    """Xavier init, SGD steps, per-epoch loss/accuracy sums: train_ch6 equals the arithmetic done by hand.

    Unequal batch sizes (8, 8, 5) check that the loss is weighted by B; two epochs check that the
    sums restart each epoch and that the returned figures are the last epoch's.
    """
    train, test = _striped_batches([8, 8, 5], seed=1), _striped_batches([7, 6], seed=2)
    lr, epochs, seed = 0.05, 2, 123  # last epoch: 15/21 train, 6/13 test correct (not saturated)
    torch.manual_seed(0)
    net = _linear_net()
    b0 = net[1].bias.detach().clone()  # (10,) the default init, left alone by init_weights
    torch.manual_seed(seed)
    W0 = torch.nn.init.xavier_uniform_(torch.empty(CLASSES, PIXELS))  # (10, 784) the draw train_ch6 makes
    W, b, train_loss, train_acc, test_acc = _sgd_by_hand(W0, b0, train, test, epochs, lr)
    assert (W - W0.double()).abs().max() > 1e-2  # the reference itself moved: the test is not vacuous

    torch.manual_seed(seed)  # train_ch6's first random draw is net.apply(init_weights)
    result = book.train_ch6(net, train, test, num_epochs=epochs, lr=lr, device="cpu")

    torch.testing.assert_close(net[1].weight.detach().double(), W, rtol=0, atol=1e-5)
    torch.testing.assert_close(net[1].bias.detach().double(), b, rtol=0, atol=1e-5)
    assert result["train/loss"] == pytest.approx(train_loss, rel=1e-5)
    assert result["train/acc"] == train_acc  # correct / 21 examples: exact
    assert result["test/acc"] == test_acc  # correct / 13 examples with the final weights
    assert result["examples"] == epochs * 21 and result["epochs"] == epochs


def test_train_ch6_learns_the_striped_data(tiny_root: Path) -> None:
    """Several epochs of the book's loop drive the loss far down and the test accuracy far above chance."""

    def run(epochs: int) -> dict:
        torch.manual_seed(0)  # same init and shuffles: the 1-epoch run is the 6-epoch run's first epoch
        train_iter, test_iter = book.load_data_fashion_mnist(16, root=tiny_root, num_workers=0)
        return book.train_ch6(_linear_net(), train_iter, test_iter, num_epochs=epochs, lr=0.1, device="cpu")

    first, last = run(1), run(6)
    assert first["train/loss"] > 1.5  # near ln 10 = 2.30 while the weights are still random (~2.0 measured)
    assert last["train/loss"] < 0.25 * first["train/loss"]  # ~0.21 measured
    assert last["train/loss"] < 0.25 * math.log(10)
    assert last["train/acc"] >= 0.9 and last["test/acc"] >= 0.8  # chance is 0.1
