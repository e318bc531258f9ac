"""CIFAR-10 and CIFAR-100 in torchvision's python format, read by their format, not by checksum.

``<root>/cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``)
and ``<root>/cifar-100-python/`` (``train``, ``test``, ``meta``), as ``torchvision.datasets.CIFAR10`` and
``CIFAR100`` download and unpack them. Downloading goes through torchvision, which checks the official
archive's MD5 checksum. Reading does not use torchvision's classes, which refuse any file whose MD5
differs from the official one: here each file is checked by its format (a dict with ``data`` of
(N, 3072) uint8 and N labels in range), so a converted or regenerated copy works, and a wrong file is
one :class:`DataError` naming it and what is wrong. The pickles are read with an unpickler that builds
only dicts, lists, strings, numbers and NumPy arrays: a pickle can run code, these cannot.
"""

from __future__ import annotations

import io
import logging
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .idx import Split, candidate_roots

logger = logging.getLogger(__name__)

SIDE = 32  # pixels
PIXELS = 3 * SIDE * SIDE  # values per image: 1024 red, 1024 green, 1024 blue, rows top to bottom


@dataclass(frozen=True)
class CifarFormat:
    """One CIFAR version's files and keys, as torchvision's classes name them."""

    name: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str  # key of the labels in a batch
    names_key: str  # key of the class names in the meta file
    classes: int
    torchvision_class: str
    other_label_key: str  # the other version's label key: names the mix-up


CIFAR = {
    "cifar10": CifarFormat("CIFAR-10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                           "test_batch", "batches.meta", "labels", "label_names", 10, "CIFAR10", "fine_labels"),
    "cifar100": CifarFormat("CIFAR-100", "cifar-100-python", ("train",), "test", "meta", "fine_labels",
                            "fine_label_names", 100, "CIFAR100", "labels"),
}
ALLOWED_GLOBALS = {  # what the CIFAR pickles (and NumPy's array pickling) need, nothing else
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks to build {module}.{name}, which no CIFAR file holds")


def _unpickle(path: Path) -> dict:
    try:
        data = _DataOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file raises many types
        raise DataError(f"{path}: not a CIFAR python-format file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a CIFAR python-format file (holds a {type(data).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}


def _batch(path: Path, fmt: CifarFormat) -> Split:
    """One batch file as (N, 3, 32, 32) uint8 images and (N,) labels, checked."""
    batch = _unpickle(path)
    if "data" not in batch or fmt.label_key not in batch:
        other = next(n for k, n in ((f.label_key, f.name) for f in CIFAR.values()) if k == fmt.other_label_key)
        hint = (f"; it has {fmt.other_label_key!r}: a {other} file" if fmt.other_label_key in batch
                else f"; keys found: {', '.join(map(str, batch)) or 'none'}")
        raise DataError(f"{path}: not a {fmt.name} batch (needs 'data' and {fmt.label_key!r}){hint}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[fmt.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{path}: 'data' is {data.dtype} of shape {data.shape}, expected uint8 of shape "
                        f"(N, {PIXELS}) (N images of 3 x {SIDE} x {SIDE}); not the python version of {fmt.name}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    bad = int(((labels < 0) | (labels >= fmt.classes)).sum())
    if bad:
        raise DataError(f"{path}: {bad} labels outside 0..{fmt.classes - 1}; is it {fmt.name}?")
    images = torch.from_numpy(data.reshape(-1, 3, SIDE, SIDE).copy())
    return Split(images, torch.from_numpy(labels.astype(np.int64)))


def class_names(folder: Path, fmt: CifarFormat) -> list[str]:
    """The class names in label order, from the meta file."""
    path = folder / fmt.meta
    names = _unpickle(path).get(fmt.names_key)
    if not isinstance(names, list) or len(names) != fmt.classes:
        raise DataError(f"{path}: no list of {fmt.classes} {fmt.names_key!r}; not {fmt.name}'s meta file")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def find_folder(name: str, root: str | None) -> Path | None:
    """The first ``<candidate root>/<cifar folder>`` holding all of its files."""
    fmt = CIFAR[name]
    for base in candidate_roots(root):
        folder = base / fmt.folder
        if all((folder / f).is_file() for f in (*fmt.train, fmt.test, fmt.meta)):
            return folder
    return None


def _download(name: str, root: str | None) -> Path | None:
    """torchvision's download (the official archive, its MD5 checked) into the first candidate root."""
    import torchvision.datasets

    fmt = CIFAR[name]
    target = candidate_roots(root)[0]
    existed = target.exists()
    try:
        logger.info("downloading %s into %s", fmt.name, target)
        getattr(torchvision.datasets, fmt.torchvision_class)(root=str(target), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types; all mean "not available"
        logger.warning("download of %s failed: %s", fmt.name, exc)
        if not existed and not any(p.is_file() for p in target.rglob("*")):
            shutil.rmtree(target, ignore_errors=True)
        return None
    return find_folder(name, str(target))


def missing_message(name: str, root: str | None, download: bool) -> str:
    fmt = CIFAR[name]
    searched = ", ".join(str(p / fmt.folder) for p in candidate_roots(root))
    binary = [p for p in candidate_roots(root) if (p / fmt.folder.replace("-py", "-bin")).is_dir()
              or (p / fmt.folder.replace("-python", "-binary")).is_dir()]
    hint = (f" Found the binary version in {binary[0]}: cnnbench reads the python version "
            f"({fmt.folder}, as torchvision downloads it)." if binary else "")
    tried = "Download failed (offline?). " if download else "Download is off (dataset.download=false). "
    return (f"{fmt.name} not found. Searched: {searched}; expected {', '.join((*fmt.train, fmt.test, fmt.meta))} "
            f"there.{hint} {tried}"
            f"Point cnnbench at a copy with dataset.root=/path/to/data (holding {fmt.folder}/).")


def load_cifar(name: str, root: str | None, download: bool) -> tuple[list[str], Split, Split]:
    """(class names, train, test) of ``cifar10`` or ``cifar100``; downloads when missing and allowed."""
    fmt = CIFAR[name]
    folder = find_folder(name, root)
    if folder is None and download:
        folder = _download(name, root)
    if folder is None:
        raise DataError(missing_message(name, root, download))
    logger.info("reading %s from %s", fmt.name, folder)
    parts = [_batch(folder / f, fmt) for f in fmt.train]
    train = Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    return class_names(folder, fmt), train, _batch(folder / fmt.test, fmt)
