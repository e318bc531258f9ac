"""Finding, checking and reading the four IDX files of an MNIST-format dataset.

Each file may be plain or gzipped (``NAME.gz``, as the files are published and as torchvision's layout
allows); the plain file wins when both exist. Fashion-MNIST's four files gzip from 55 MB to about 30 MB,
small enough to travel with a checkout to another machine. Plain files are read with NumPy after their
header and length are checked (not by torchvision's readers: importing torchvision brings in
``torch._dynamo`` and costs 1.6 CPU-seconds of every run's start). Gzipped files are decompressed in memory
and go through the same checks, so every problem, a damaged archive included, is one :class:`DataError`
naming the file.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from ..config import cache_root
from ..errors import DataError
from ..schema import DatasetConfig

logger = logging.getLogger(__name__)

# split -> (images file, labels file), torchvision's names for the uncompressed files.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension
GZIP_SUFFIX = ".gz"
GZIP_MAGIC = 0x1F8B  # the first two bytes of every gzip file
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
    found = [root, os.environ.get("CNNBENCH_DATA"), "data", cache_root() / "data"]
    return [Path(p).expanduser() for p in found if p]


def idx_path(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it is a file, else ``folder/name.gz``, else None."""
    for path in (folder / name, folder / f"{name}{GZIP_SUFFIX}"):
        if path.is_file():
            return path
    return None


def _files_in(folder: Path) -> bool:
    return all(idx_path(folder, name) is not None for pair in IDX_FILES.values() for name in pair)


def is_gzipped(path: Path) -> bool:
    return path.name.endswith(GZIP_SUFFIX)


def open_idx(path: Path) -> BinaryIO:
    """A binary stream of the IDX bytes, decompressing ``.gz`` files on the fly (for header peeks)."""
    return gzip.open(path, "rb") if is_gzipped(path) else path.open("rb")


def find_data_root(folder_name: str, root: str | None) -> Path | None:
    """The first folder holding all four IDX files: ``<root>/<folder>/raw``, ``<root>/<folder>`` or ``<root>``."""
    for base in candidate_roots(root):
        for folder in (base / folder_name / "raw", base / folder_name, base):
            if _files_in(folder):
                return folder
    return None


@dataclass
class _IdxFile:
    """One IDX file whose header and length were checked: its dimensions and, for gzip, its bytes."""

    path: Path
    dims: tuple[int, ...]
    data: bytes | None  # the decompressed file for .gz; None for a plain file (read when needed)

    def tensor(self) -> torch.Tensor:
        """The contents shaped ``dims``, uint8 (the header and length were checked when opened)."""
        header = 4 * (len(self.dims) + 1)  # bytes: magic + one uint32 per dimension
        if self.data is None:  # read here, not by torchvision, whose import alone costs 1.6 CPU-seconds
            return torch.from_numpy(np.fromfile(self.path, dtype=np.uint8, offset=header)).view(self.dims)
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8, offset=header).view(self.dims)


def _gunzip(path: Path) -> bytes:
    """The decompressed bytes of ``path``; a truncated or corrupt archive is one DataError naming it."""
    compressed = path.read_bytes()
    try:
        return gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a cut-off stream, EOFError
        raise DataError(f"{path}: not a readable gzip file ({exc}); the download or copy is damaged, "
                        "fetch the file again") from None


def _open_checked(path: Path, magic: int, ndim: int) -> _IdxFile:
    """Validate magic number and length before parsing (gzip: of the decompressed bytes)."""
    header = 4 * (ndim + 1)  # bytes
    if is_gzipped(path):
        data = _gunzip(path)
        size, head = len(data), data[:header]
    else:
        data = None
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(header)
    note = " after decompression" if data is not None else ""
    if size < header:
        raise DataError(f"{path}: file is {size} bytes{note}, shorter than its {header}-byte IDX header")
    found, *dims = struct.unpack(f">{ndim + 1}I", head)
    if found != magic:
        compressed = data is None and found >> 16 == GZIP_MAGIC
        hint = (f"; it is gzip-compressed: name it {path.name}{GZIP_SUFFIX}" if compressed
                else "; not an IDX file of this kind")
        raise DataError(f"{path}: wrong magic number 0x{found:08x} (expected 0x{magic:08x}){hint}")
    expected = header + int(np.prod(dims))
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise DataError(f"{path}: {what}: {size} bytes, expected {expected} for dimensions {tuple(dims)}{note}")
    return _IdxFile(path, tuple(dims), data)


def _file(folder: Path, name: str) -> Path:
    """The plain or gzipped file of ``name``; the plain path when neither exists (reading it says so)."""
    return idx_path(folder, name) or folder / name


def read_split(folder: Path, split: str, num_classes: int) -> Split:
    """Read and validate one split's images and labels (each file plain or gzipped)."""
    images_name, labels_name = IDX_FILES[split]
    images = _open_checked(_file(folder, images_name), IMAGES_MAGIC, 3)
    labels = _open_checked(_file(folder, labels_name), LABELS_MAGIC, 1)
    if images.dims[0] != labels.dims[0]:
        raise DataError(f"{images.path} holds {images.dims[0]} images but {labels.path} holds {labels.dims[0]} labels")
    return _checked(Split(images.tensor(), labels.tensor().long()), str(labels.path), num_classes)


def write_plain_copy(folder: Path, dest: Path) -> Path:
    """The four files of ``folder`` as plain IDX files in ``dest`` (for readers of plain files only, such
    as torchvision's datasets); gzipped ones are checked and decompressed, plain ones copied."""
    dest.mkdir(parents=True, exist_ok=True)
    for images_name, labels_name in IDX_FILES.values():
        for name, magic, ndim in ((images_name, IMAGES_MAGIC, 3), (labels_name, LABELS_MAGIC, 1)):
            source = _file(folder, name)
            if is_gzipped(source):
                (dest / name).write_bytes(_open_checked(source, magic, ndim).data)
            else:
                shutil.copyfile(source, dest / name)
    return dest


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


def _missing_message(cfg: DatasetConfig) -> str:
    searched = ", ".join(str(p / cfg.folder / "raw") for p in candidate_roots(cfg.root))
    files = ", ".join(n for pair in IDX_FILES.values() for n in pair)
    return (
        f"{cfg.name} not found. Searched: {searched}. Expected the files {files}, each plain or gzipped "
        f"(NAME{GZIP_SUFFIX}), in torchvision's layout <root>/{cfg.folder}/raw/. "
        f"{'Download failed (offline?). ' if cfg.download else 'Download is off (dataset.download=false). '}"
        "Point cnnbench at a local copy with dataset.root=/path/to/data or CNNBENCH_DATA=/path/to/data, "
        "or train offline on the packaged 7,000-image sample: cnnbench train experiment=quickstart."
    )


def locate(cfg: DatasetConfig) -> Path:
    """The folder holding the ``dataset`` group's four files, downloaded first when missing and allowed;
    missing, one DataError saying where it looked and what to do."""
    folder = find_data_root(cfg.folder, cfg.root)
    if folder is None and cfg.download:
        folder = _download(cfg.folder, cfg.root)
    if folder is None:
        raise DataError(_missing_message(cfg))
    return folder


def load_splits(cfg: DatasetConfig) -> tuple[Split, Split]:
    """Train and test splits for the ``dataset`` section (its schema's fields: the typed object or the
    composed node the preparation step, :mod:`cnnbench.data.sources`, hands over)."""
    if cfg.name == "fashion_mnist_mini":
        return load_mini()
    folder = locate(cfg)
    logger.debug("reading %s from %s", cfg.name, folder)
    return read_split(folder, "train", cfg.num_classes), read_split(folder, "test", cfg.num_classes)


# dataset name -> training examples, for the batch-size checks when the files are not at hand
KNOWN_TRAIN_SIZES = {"fashion_mnist": 60_000, "mnist": 60_000, "kmnist": 60_000, "fashion_mnist_mini": 6_000}


def train_size(dataset: DatasetConfig) -> int | None:
    """Training examples of the ``dataset`` group's data: the count in its label file's header when the
    files are found, else the published size of a known dataset, else None. Cheap (reads 8 bytes)."""
    folder = find_data_root(str(dataset.folder), dataset.root) if dataset.name != "fashion_mnist_mini" else None
    labels = None if folder is None else idx_path(folder, IDX_FILES["train"][1])  # plain or .gz
    if labels is not None:
        try:
            with open_idx(labels) as f:
                return struct.unpack(">II", f.read(8))[1]
        except (OSError, EOFError, zlib.error, struct.error):  # a damaged .gz included
            return None  # the data checks report a broken file with its own message
    return KNOWN_TRAIN_SIZES.get(str(dataset.name))
