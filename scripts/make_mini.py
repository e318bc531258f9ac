"""Make cnnbench/data/fashion_mnist_mini.npz: a stratified, seeded sample of Fashion-MNIST.

    python scripts/make_mini.py --root ../shared/data [--train-per-class 600] [--test-per-class 100]

Takes the first images of each class in a permutation seeded with --seed, so the sample is the same on
every machine that has the same full files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cnnbench.data.idx import MINI_DATASET, find_data_root, read_split


def stratified(labels: torch.Tensor, per_class: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``per_class`` examples of every class, drawn by a seeded permutation."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    picks = [order[labels[order] == c][:per_class] for c in range(num_classes)]
    return torch.cat(picks).sort().values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "cnnbench" / "data" / MINI_DATASET))
    args = parser.parse_args()
    folder = find_data_root("FashionMNIST", args.root)
    if folder is None:
        raise SystemExit(f"no Fashion-MNIST files under {args.root}")
    arrays = {}
    for split, per_class, key in (("train", args.train_per_class, "train"), ("test", args.test_per_class, "test")):
        data = read_split(folder, split, num_classes=10)
        idx = stratified(data.labels, per_class, 10, args.seed)
        arrays[f"x_{key}"] = data.images[idx].numpy()
        arrays[f"y_{key}"] = data.labels[idx].numpy().astype(np.uint8)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
