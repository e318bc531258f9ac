"""Finding, checking and reading the four IDX files of an MNIST-format dataset."""

from __future__ import annotations

import logging
import os
import shutil
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.datasets.mnist import read_image_file, read_label_file

from ..errors import DataError

logger = logging.getLogger(__name__)

# split -> (images file, labels file), torchvision's names for the uncompressed files.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension
MINI_DATASET = "fashion_mnist_mini.npz"  # packaged sample, made by scripts/make_mini.py
TORCHVISION_CLASSES = {"FashionMNIST": "FashionMNIST", "MNIST": "MNIST", "KMNIST": "KMNIST"}


@dataclass
class Split:
    """One split as tensors: images (N, 28, 28) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def candidate_roots(root: str | None) -> list[Path]:
    """Folders searched for the data, in order: dataset.root, $CNNBENCH_DATA, ./data, the user cache."""
    found = [root, os.environ.get("CNNBENCH_DATA"), "data", Path.home() / ".cache" / "cnnbench" / "data"]
    return [Path(p).expanduser() for p in found if p]


def _files_in(folder: Path) -> bool:
    return all((folder / name).is_file() for pair in IDX_FILES.values() for name in pair)


def find_data_root(folder_name: str, root: str | None) -> Path | None:
    """The first folder holding all four IDX files: ``<root>/<folder>/raw``, ``<root>/<folder>`` or ``<root>``."""
    for base in candidate_roots(root):
        for folder in (base / folder_name / "raw", base / folder_name, base):
            if _files_in(folder):
                return folder
    return None


def _check_header(path: Path, magic: int, ndim: int) -> tuple[int, ...]:
    """Validate magic number and length before parsing; returns the dimensions."""
    size = path.stat().st_size
    header = 4 * (ndim + 1)
    if size < header:
        raise DataError(f"{path}: file is {size} bytes, shorter than its {header}-byte IDX header")
    with path.open("rb") as f:
        found, *dims = struct.unpack(f">{ndim + 1}I", f.read(header))
    if found != magic:
        raise DataError(
            f"{path}: wrong magic number 0x{found:08x} (expected 0x{magic:08x}); "
            "not an uncompressed IDX file of this kind"
        )
    expected = header + int(np.prod(dims))
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise DataError(f"{path}: {what}: {size} bytes, expected {expected} for dimensions {tuple(dims)}")
    return tuple(dims)


def read_split(folder: Path, split: str, num_classes: int) -> Split:
    """Read and validate one split's images and labels."""
    images_path, labels_path = (folder / name for name in IDX_FILES[split])
    n_images, *_ = _check_header(images_path, IMAGES_MAGIC, 3)
    (n_labels,) = _check_header(labels_path, LABELS_MAGIC, 1)
    if n_images != n_labels:
        raise DataError(f"{images_path} holds {n_images} images but {labels_path} holds {n_labels} labels")
    images, labels = read_image_file(str(images_path)), read_label_file(str(labels_path)).long()
    return _checked(Split(images, labels), str(labels_path), num_classes)


def _checked(split: Split, source: str, num_classes: int) -> Split:
    if len(split) == 0:
        raise DataError(f"{source}: the split is empty")
    bad = int(((split.labels < 0) | (split.labels >= num_classes)).sum())
    if bad:
        raise DataError(f"{source}: {bad} labels outside 0..{num_classes - 1}")
    return split


def load_mini() -> tuple[Split, Split]:
    """The stratified Fashion-MNIST sample packaged with cnnbench."""
    path = resources.files("cnnbench.data") / MINI_DATASET
    with resources.as_file(path) as p, np.load(p) as z:
        return (
            Split(torch.from_numpy(z["x_train"]), torch.from_numpy(z["y_train"]).long()),
            Split(torch.from_numpy(z["x_test"]), torch.from_numpy(z["y_test"]).long()),
        )


def _download(folder_name: str, root: str | None) -> Path | None:
    """Try torchvision's download into the first candidate folder; None when it fails (offline)."""
    cls = getattr(__import__("torchvision.datasets", fromlist=[folder_name]), folder_name, None)
    if cls is None:
        return None
    target = candidate_roots(root)[0]
    existed = target.exists()
    try:
        logger.info("downloading %s into %s", folder_name, target)
        for train in (True, False):
            cls(root=str(target), train=train, download=True)
    except Exception as exc:  # network errors come in many types; all mean "not available"
        logger.warning("download of %s failed: %s", folder_name, exc)
        if not existed and not any(p.is_file() for p in target.rglob("*")):
            shutil.rmtree(target, ignore_errors=True)  # leave no empty folders behind
        return None
    return find_data_root(folder_name, str(target))


def _missing_message(cfg: DictConfig) -> str:
    searched = ", ".join(str(p / cfg.folder / "raw") for p in candidate_roots(cfg.root))
    files = ", ".join(n for pair in IDX_FILES.values() for n in pair)
    return (
        f"{cfg.name} not found. Searched: {searched}. Expected the files {files} "
        f"(torchvision's layout <root>/{cfg.folder}/raw/). "
        f"{'Download failed (offline?). ' if cfg.download else 'Download is off (dataset.download=false). '}"
        "Point cnnbench at a local copy with dataset.root=/path/to/data or CNNBENCH_DATA=/path/to/data, "
        "or train offline on the packaged sample with dataset=fashion_mnist_mini."
    )


def load_splits(cfg: DictConfig) -> tuple[Split, Split]:
    """Train and test splits for the ``dataset`` config group."""
    if cfg.name == "fashion_mnist_mini":
        return load_mini()
    folder = find_data_root(cfg.folder, cfg.root)
    if folder is None and cfg.download:
        folder = _download(cfg.folder, cfg.root)
    if folder is None:
        raise DataError(_missing_message(cfg))
    logger.info("reading %s from %s", cfg.name, folder)
    return read_split(folder, "train", cfg.num_classes), read_split(folder, "test", cfg.num_classes)
