"""The book's training pipeline, copied faithfully: the baseline cnnbench's own trainer is measured against.

This module reproduces the PyTorch code of *Dive into Deep Learning* (d2l 0.17 / 1.0) that chapters 6-8
use to train their CNNs on Fashion-MNIST:

* ``load_data_fashion_mnist``: torchvision's ``FashionMNIST`` dataset with a per-image PIL
  ``Resize`` + ``ToTensor`` transform, served by ``DataLoader`` worker processes (4, the book's
  ``get_dataloader_workers()``);
* ``train_ch6`` / ``evaluate_accuracy_gpu``: Xavier initialisation, plain SGD, cross-entropy, and a
  Python-level accumulation of loss and accuracy that copies a scalar to the host after every batch.

It is kept **deliberately unoptimized**: per-image PIL work in the workers, a host sync per batch, no
mixed precision, no channels-last, no compilation. Do not "fix" it; its slowness is what it measures.
The only departures from the book are that the matplotlib animator is replaced by ``logging``, the
results are returned as a dict, and ``max_batches`` can shorten an epoch for benchmarks.

The book's throughput figure (``examples_per_sec_book``) counts only the time inside its timer, which
starts *after* the DataLoader has produced a batch; so it leaves out data loading, worker start-up and
evaluation. ``wall_time_s`` is the end-to-end figure that includes all of them.

Command line::

    python -m cnnbench.book.pipeline --model lenet --epochs 10 --lr 0.9 --batch-size 256 --root /path/to/data
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils import data
from torchvision import transforms

__all__ = [
    "BOOK_NUM_WORKERS",
    "Timer",
    "accuracy",
    "default_root",
    "evaluate_accuracy_gpu",
    "init_weights",
    "load_data_fashion_mnist",
    "main",
    "run_book",
    "train_ch6",
    "try_gpu",
]

log = logging.getLogger(__name__)

BOOK_NUM_WORKERS = 4  # d2l.get_dataloader_workers()


def default_root() -> str:
    """Where the data is looked for by default: ``$CNNBENCH_DATA``, else ``./data``."""
    return os.environ.get("CNNBENCH_DATA") or "data"


def try_gpu(i: int = 0) -> torch.device:
    """The book's ``d2l.try_gpu``: ``cuda:i`` if it exists, else the CPU."""
    if torch.cuda.device_count() >= i + 1:
        return torch.device(f"cuda:{i}")
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------- data


def load_data_fashion_mnist(
    batch_size: int,
    resize: int | None = None,
    root: str | os.PathLike[str] | None = None,
    num_workers: int = BOOK_NUM_WORKERS,
) -> tuple[data.DataLoader, data.DataLoader]:
    """The book's loader: (train_iter, test_iter) over torchvision's FashionMNIST.

    Each image is decoded to PIL, optionally resized (``transforms.Resize``) and converted by
    ``ToTensor`` in the DataLoader's worker processes, one image at a time. Batches are
    X: (B, 1, side, side) float32 in [0, 1], y: (B,) int64. Nothing is downloaded: the IDX files must
    already be under ``<root>/FashionMNIST/raw/``.
    """
    root = default_root() if root is None else root
    trans: list = [transforms.ToTensor()]
    if resize:
        trans.insert(0, transforms.Resize(resize))
    trans = transforms.Compose(trans)
    mnist_train = torchvision.datasets.FashionMNIST(root=root, train=True, transform=trans, download=False)
    mnist_test = torchvision.datasets.FashionMNIST(root=root, train=False, transform=trans, download=False)
    return (
        data.DataLoader(mnist_train, batch_size, shuffle=True, num_workers=num_workers),
        data.DataLoader(mnist_test, batch_size, shuffle=False, num_workers=num_workers),
    )


# ---------------------------------------------------------------------------------------- training


class Timer:
    """The book's ``d2l.Timer``: records the durations between ``start()`` and ``stop()``."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._tik = 0.0

    def start(self) -> None:
        self._tik = time.perf_counter()

    def stop(self) -> float:
        self.times.append(time.perf_counter() - self._tik)
        return self.times[-1]

    def sum(self) -> float:
        return sum(self.times)


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Number of correct predictions, as a Python float (``d2l.accuracy``; forces a host sync).

    y_hat: (B, classes) logits or (B,) predicted labels; y: (B,) labels.
    """
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)  # (B,)
    cmp = y_hat.type(y.dtype) == y  # (B,) bool
    return float(cmp.type(y.dtype).sum())


def init_weights(m: nn.Module) -> None:
    """Xavier-uniform on the weight of every Linear and Conv2d (exact types, as in the book)."""
    if type(m) == nn.Linear or type(m) == nn.Conv2d:  # noqa: E721 - the book's exact-type test
        nn.init.xavier_uniform_(m.weight)


def evaluate_accuracy_gpu(
    net: nn.Module,
    data_iter: Iterable,
    device: torch.device | None = None,
    max_batches: int | None = None,
) -> float:
    """Accuracy of ``net`` on ``data_iter`` (``d2l.evaluate_accuracy_gpu``).

    Puts the net in eval mode and accumulates the number of correct predictions batch by batch as
    Python floats. ``max_batches`` (not in the book) stops early, for benchmarks.
    """
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    num_correct = 0.0
    num_examples = 0.0
    with torch.no_grad():
        for i, (X, y) in enumerate(data_iter):
            if max_batches is not None and i >= max_batches:
                break
            if isinstance(X, list):
                X = [x.to(device) for x in X]
            else:
                X = X.to(device)  # (B, 1, H, W)
            y = y.to(device)  # (B,)
            num_correct += accuracy(net(X), y)
            num_examples += y.numel()
    return num_correct / num_examples


def train_ch6(
    net: nn.Module,
    train_iter: Iterable,
    test_iter: Iterable,
    num_epochs: int,
    lr: float,
    device: torch.device | str,
    max_batches: int | None = None,
    *,
    max_eval_batches: int | None = None,
    t_start: float | None = None,
    on_epoch: Callable[[int, dict, float], None] | None = None,
) -> dict:
    """Train ``net`` with the book's ``d2l.train_ch6`` loop and return its figures.

    ``max_batches`` caps the training batches per epoch and ``max_eval_batches`` the test batches per
    evaluation (both ``None`` in the book). ``t_start`` is a ``time.perf_counter()`` reading to measure
    ``wall_time_s`` from (default: entry to this function), so a caller can include dataset construction.

    Returns ``train/loss`` and ``train/acc`` (last epoch, as the book prints them), ``test/acc``,
    ``examples_per_sec_book`` (training examples / seconds inside the book's timer), ``wall_time_s``,
    ``train_time_s`` (the timer's sum), ``examples`` (training examples processed over all epochs),
    ``epochs`` and ``device``.
    """
    t0 = time.perf_counter() if t_start is None else t_start
    device = torch.device(device)
    net.apply(init_weights)
    log.info("training on %s", device)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    timer = Timer()
    total_examples = 0
    train_l = train_acc = test_acc = float("nan")
    for epoch in range(num_epochs):
        # The book's Accumulator(3): summed loss, number correct, number of examples (this epoch).
        loss_sum = 0.0
        num_correct = 0.0
        num_examples = 0.0
        net.train()
        for i, (X, y) in enumerate(train_iter):
            if max_batches is not None and i >= max_batches:
                break
            timer.start()  # starts after the DataLoader has produced the batch
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)  # (B, 1, H, W) float32, (B,) int64
            y_hat = net(X)  # (B, classes)
            l = loss(y_hat, y)  # scalar, mean over the batch  # noqa: E741 - the book's name
            l.backward()
            optimizer.step()
            with torch.no_grad():
                # float() on each term is a device->host copy per batch, as Accumulator.add does.
                loss_sum += float(l * X.shape[0])
                num_correct += accuracy(y_hat, y)
                num_examples += X.shape[0]
            timer.stop()
        train_l = loss_sum / num_examples
        train_acc = num_correct / num_examples
        total_examples += int(num_examples)
        test_acc = evaluate_accuracy_gpu(net, test_iter, max_batches=max_eval_batches)
        if on_epoch is not None:  # not in the book: lets bench time the book's loop to an accuracy
            on_epoch(epoch, {"train/loss": train_l, "train/acc": train_acc, "test/acc": test_acc},
                     time.perf_counter() - t0)
        log.info(
            "epoch %d/%d: loss %.3f, train acc %.3f, test acc %.3f",
            epoch + 1, num_epochs, train_l, train_acc, test_acc,
        )
    train_time = timer.sum()
    examples_per_sec = total_examples / train_time if train_time > 0 else float("nan")
    wall_time = time.perf_counter() - t0
    log.info(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    log.info(f"{examples_per_sec:.1f} examples/sec on {str(device)}")
    return {
        "train/loss": train_l,
        "train/acc": train_acc,
        "test/acc": test_acc,
        "examples_per_sec_book": examples_per_sec,
        "wall_time_s": wall_time,
        "train_time_s": train_time,
        "examples": total_examples,
        "epochs": num_epochs,
        "device": str(device),
    }


def run_book(
    model: str,
    num_epochs: int,
    lr: float,
    batch_size: int,
    resize: int | None = None,
    root: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    max_eval_batches: int | None = None,
    num_workers: int = BOOK_NUM_WORKERS,
    on_epoch: Callable[[int, dict, float], None] | None = None,
) -> dict:
    """Build ``model``, its loaders and train it as the book does; ``wall_time_s`` covers all of it.

    The network is built for ``resize`` or, when that is ``None``, the book's resolution for it. The
    loader is given a resize only when the side differs from 28, as the book passes ``resize=None`` for
    LeNet. Adds ``model``, ``image_size``, ``batch_size`` and ``lr`` to :func:`train_ch6`'s dict.
    """
    from ..data.loader import NATIVE_SIDE
    from ..models import build_model, input_side

    t0 = time.perf_counter()
    image_size = input_side(model, resize)
    net = build_model(model, in_channels=1, num_classes=10, image_size=image_size)
    train_iter, test_iter = load_data_fashion_mnist(
        batch_size,
        resize=image_size if image_size != NATIVE_SIDE else None,
        root=root,
        num_workers=num_workers,
    )
    result = train_ch6(
        net, train_iter, test_iter, num_epochs, lr, device if device is not None else try_gpu(),
        max_batches=max_batches, max_eval_batches=max_eval_batches, t_start=t0, on_epoch=on_epoch,
    )
    result.update(model=model, image_size=image_size, batch_size=batch_size, lr=lr)
    return result


# ------------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cnnbench.book.pipeline",
        description="Train a network with the book's own (unoptimized) pipeline: the baseline.",
    )
    p.add_argument("--model", default="lenet", help="registered network name (default: lenet)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--resize", type=int, default=None,
                   help="image side in pixels (default: the book's resolution for the model)")
    p.add_argument("--root", default=None, help="data root holding FashionMNIST/raw (default: "
                   "$CNNBENCH_DATA or ./data)")
    p.add_argument("--max-batches", type=int, default=None, help="training batches per epoch cap")
    p.add_argument("--max-eval-batches", type=int, default=None, help="test batches per evaluation cap")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: the book's try_gpu())")
    p.add_argument("--num-workers", type=int, default=BOOK_NUM_WORKERS,
                   help=f"DataLoader workers (default: {BOOK_NUM_WORKERS}, as the book)")
    p.add_argument("--seed", type=int, default=None, help="torch.manual_seed (the book does not seed)")
    p.add_argument("--json", type=Path, default=None, help="also write the result dict to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: train, print the result dict as JSON, optionally write it to ``--json``."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    result = run_book(
        args.model,
        num_epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        resize=args.resize,
        root=args.root if args.root is not None else default_root(),
        device=args.device,
        max_batches=args.max_batches,
        max_eval_batches=args.max_eval_batches,
        num_workers=args.num_workers,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
