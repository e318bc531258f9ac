"""Every dataset format behind one door: read the splits, and settle what the config leaves to the data.

``dataset.format`` picks the reader: ``idx`` (Fashion-MNIST, MNIST, KMNIST: :mod:`.idx`), ``image_folder``
(your own pictures: :mod:`.folder`), ``cifar`` (CIFAR-10/100: :mod:`.cifar`). Images are (N, H, W) uint8
for the MNIST family and (N, C, H, W) uint8 for the others; the loader takes both.

:func:`settle_dataset` writes into the config what only the data knows (channels, class count, class
names, the size of a val/ folder, the per-channel mean and std of the training images) before the run's
folder exists, so that bad data is refused with one sentence first and the run's recorded config holds
the facts that eval, predict, export and report read back.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .idx import KNOWN_TRAIN_SIZES, Split
from .idx import load_splits as load_idx
from .idx import train_size as idx_train_size
from .split import split_train_val

logger = logging.getLogger(__name__)

IDX_IMAGE_BYTES = 28 * 28 + 8  # one 28x28 uint8 image and its int64 label
DEFAULT_IDX_TEST = 10_000  # test images of the MNIST-format datasets
KEPT = 2  # datasets kept read in this process (the pre-launch checks and the run read the same one)
_READ: OrderedDict[str, tuple[list[str] | None, dict[str, Split]]] = OrderedDict()


@dataclass
class DataSplits:
    """The splits a run uses: train, validation (None without one) and test."""

    train: Split
    val: Split | None
    test: Split


@dataclass(frozen=True)
class DataSpec:
    """What a run knows of its data once settled: the facts the config records, and the sizes the checks use."""

    name: str
    format: str  # idx | image_folder | cifar
    side: int  # the run's input side (pixels): dataset.resize or the model's book resolution
    channels: int
    num_classes: int
    classes: tuple[str, ...] | None  # None: the config's names (the MNIST family's YAML)
    mean: tuple[float, ...] | None  # per channel (or one for all) in [0, 1]; None: no normalization
    std: tuple[float, ...] | None
    train_size: int | None  # examples train and validation share (a val/ folder included); None: unknown
    val_size: int  # examples of the validation split (0: none)
    test_size: int | None  # None: not read yet (IDX files: the build reads them)
    bytes: int  # bytes of every split's uint8 images and int64 labels (what the loaders keep on the device)


@dataclass(frozen=True)
class SettledData:
    """A settled dataset: its facts and, when they were read to settle them, its splits (None: IDX files,
    read by the build)."""

    spec: DataSpec
    splits: DataSplits | None
    facts: dict = field(default_factory=dict)  # the dataset group's SETTLED_KEYS as settle_dataset wrote them


SETTLED_KEYS = ("name", "num_classes", "classes", "in_channels", "val_size", "mean", "std")  # what settling writes


def record_settled(cfg: DictConfig, settled: SettledData) -> None:
    """Write what settling found into ``cfg`` (an equal config composed again): nothing is read."""
    for key, value in settled.facts.items():
        cfg.dataset[key] = value


def data_format(dataset: DictConfig) -> str:
    """``dataset.format``; configs recorded before the key existed are IDX datasets."""
    return str(dataset.get("format") or "idx")


def _channels(dataset: DictConfig) -> int | None:
    value = dataset.get("channels", "auto")
    return None if value in (None, "auto") else int(value)


def read_dataset(dataset: DictConfig, side: int) -> tuple[list[str] | None, dict[str, Split]]:
    """(class names or None for the config's own, {split: Split}) of the ``dataset`` group; ``side`` is
    the run's input side (an image folder of mixed sizes is stored at it). Image folders and CIFAR are
    kept for the next call (the pre-launch checks, the run and every in-process sweep job read them)."""
    plain = OmegaConf.to_container(dataset, resolve=True)
    fmt = data_format(dataset)
    listing = None
    if fmt == "image_folder":  # images added, removed or rewritten since: read again (a notebook's second run)
        from .folder import list_folder

        listing = list_folder(dataset.get("path"))  # the one listing of the folder this read makes
    key = json.dumps([plain.get(k) for k in ("format", "folder", "root", "path", "channels", "image_size",
                                             "on_bad_image")] + [side, listing.key if listing else ""], default=str)
    if key in _READ:
        _READ.move_to_end(key)
        return _READ[key]
    if fmt == "image_folder":
        from .folder import load_folder

        size = int(dataset.get("image_size") or side)
        data = load_folder(dataset.get("path"), _channels(dataset), size, str(dataset.get("on_bad_image", "skip")),
                           dataset.get("decode_workers"), listing=listing)
        result = (data.classes, data.splits)
    elif fmt == "cifar":
        from .cifar import CIFAR, load_cifar

        name = next((k for k, f in CIFAR.items() if f.folder == dataset.get("folder")), str(dataset.name))
        if name not in CIFAR:
            raise ConfigError(f"dataset.folder={dataset.get('folder')!r} is not a CIFAR folder; use "
                              f"{' or '.join(f.folder for f in CIFAR.values())}")
        classes, train, test = load_cifar(name, dataset.get("root"), bool(dataset.get("download", False)))
        result = (classes, {"train": train, "test": test})
    else:  # read each time: 55 MB in a fraction of a second, and a changed file is seen
        train, test = load_idx(dataset)
        return None, {"train": train, "test": test}
    _READ[key] = result
    while len(_READ) > KEPT:
        _READ.popitem(last=False)
    return result


def input_side_of(cfg: DictConfig) -> int:
    from ..models import input_side

    return input_side(str(cfg.model.name), cfg.dataset.get("resize"))


def load_splits(cfg: DictConfig, settled: SettledData | None = None) -> DataSplits:
    """Train, validation and test splits of a run's config: the val/ folder of an image folder, else
    ``dataset.val_size`` examples held out of train (stratified, seeded by ``dataset.val_seed``).
    ``settled``: what :func:`settle_dataset` read already (its splits are returned, nothing is read)."""
    if settled is not None and settled.splits is not None:
        return settled.splits
    _, splits = read_dataset(cfg.dataset, input_side_of(cfg))
    return _held_out(cfg.dataset, splits)


def _held_out(dataset: DictConfig, splits: dict[str, Split]) -> DataSplits:
    train, val = splits["train"], splits.get("val")
    val_size = int(dataset.get("val_size", 0) or 0)
    if val is None and val_size:
        train, val = split_train_val(train, val_size, int(dataset.get("val_seed", 0)))
    return DataSplits(train, val, splits["test"])


def train_size(cfg: DictConfig) -> int | None:
    """Examples that training and validation share, for the batch-size checks: train (plus a val/
    folder, which ``dataset.val_size`` then counts). IDX files: their header; else the data itself."""
    dataset = cfg.dataset
    fmt = data_format(dataset)
    if fmt == "idx":
        return idx_train_size(dataset)
    _, splits = read_dataset(dataset, input_side_of(cfg))
    return len(splits["train"]) + (len(splits["val"]) if "val" in splits else 0)


def dataset_bytes(cfg: DictConfig, default_test: int) -> int:
    """Bytes of every split's uint8 images (what the loaders keep on the device)."""
    dataset = cfg.dataset
    if data_format(dataset) == "idx":
        n = idx_train_size(dataset) or KNOWN_TRAIN_SIZES.get(str(dataset.name)) or 60_000
        return (n + default_test) * IDX_IMAGE_BYTES
    _, splits = read_dataset(dataset, input_side_of(cfg))
    return sum(s.images.numel() + 8 * len(s) for s in splits.values())


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of uint8 images ((N, H, W) or (N, C, H, W))
    scaled to [0, 1]: exact, from each channel's histogram of the 256 levels (one bincount, no float
    copy of the images; 60,000 Fashion-MNIST images in 0.1 s)."""
    x = images if images.dim() == 4 else images.unsqueeze(1)  # (N, C, H, W)
    levels = torch.arange(256, dtype=torch.float64) / 255.0  # (256,)
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()  # (256,)
        m = float((counts * levels).sum() / counts.sum())
        var = float((counts * (levels - m).square()).sum() / counts.sum())
        mean.append(round(m, 5))
        std.append(round(max(var, 1e-6) ** 0.5, 5))
    return mean, std


def _agree(dataset: DictConfig, key: str, found, what: str, hint: str = "") -> None:
    """Write ``found`` into ``dataset.key``; a value the user gave that disagrees is refused."""
    given = dataset.get(key)
    if given is not None:
        given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else given
        if given != found:
            raise ConfigError(f"dataset.{key}={given} but {what}{hint}")
    dataset[key] = found


OTHER_GROUPS = ("cifar10", "cifar100", "image_folder")  # dataset options that are not read from IDX files


def check_data_present(cfg: DictConfig) -> None:
    """The MNIST family's files are there (downloaded now when missing and allowed), so that a missing
    dataset is refused before the run folder exists; ``dataset.name=cifar10`` on an IDX dataset (which
    only renames it) is refused, naming the option that reads CIFAR-10. Other formats were read by
    :func:`settle_dataset` already."""
    dataset = cfg.dataset
    if data_format(dataset) != "idx":
        return
    if str(dataset.name) in OTHER_GROUPS:
        raise ConfigError(f"dataset.name={dataset.name} only renames the {dataset.folder} IDX dataset; choose "
                          f"the dataset with dataset={dataset.name}")
    if str(dataset.name) != "fashion_mnist_mini":
        from .idx import locate

        locate(dataset)


def settle_dataset(cfg: DictConfig) -> SettledData:
    """Fill in what the config leaves to the data (see the module's docstring) and return it with the splits
    read; idempotent. The data is read once here (one listing of an image folder, one normalization); the
    build takes the returned splits. Bad data is one DataError or ConfigError sentence."""
    dataset = cfg.dataset
    fmt = data_format(dataset)
    side = input_side_of(cfg)
    needs_stats = bool(dataset.get("normalize")) and (dataset.get("mean") is None or dataset.get("std") is None)
    if fmt == "idx" and not needs_stats:
        return SettledData(_idx_spec(cfg, side), None)  # the MNIST family: everything is in its YAML
    classes, raw = read_dataset(dataset, side)
    where = dataset.get("path") or dataset.name
    if fmt == "image_folder" and dataset.name == "image_folder":  # the option's own name: say which folder
        dataset.name = Path(str(where)).expanduser().absolute().name  # what summary, report and TensorBoard show
    if classes is not None:
        _agree(dataset, "num_classes", len(classes), f"{where} has {len(classes)} classes")
        _agree(dataset, "classes", list(classes), f"{where}'s classes are {', '.join(classes[:10])}")
    train = raw["train"]
    channels = int(train.images.shape[1]) if train.images.dim() == 4 else 1
    _agree(dataset, "in_channels", channels, f"the images of {where} have {channels} channel(s)",
           "; set dataset.channels instead" if fmt == "image_folder" else "")
    if "val" in raw:
        size = len(raw["val"])
        if int(dataset.val_size or 0) not in (0, size):
            raise ConfigError(f"{where} has a val/ folder ({size} images), the validation split; leave "
                              f"dataset.val_size at 0 (got {dataset.val_size})")
        dataset.val_size = size
    splits = _held_out(dataset, raw)
    if needs_stats:
        mean, std = channel_stats(splits.train.images)  # after a val_size hold-out: training only
        dataset.mean, dataset.std = mean, std
        logger.info("normalization from %s's training images: mean %s, std %s", where, mean, std)
    for key in ("mean", "std"):
        value = dataset.get(key)
        if OmegaConf.is_list(value) and len(value) not in (1, channels):
            raise ConfigError(f"dataset.{key} has {len(value)} values but the images of {where} have {channels} "
                              f"channel(s): give one number, or one per channel")
    sizes = {"train": len(raw["train"]) + (len(raw["val"]) if "val" in raw else 0), "test": len(raw["test"])}
    data_bytes = sum(s.images.numel() + 8 * len(s) for s in raw.values())
    facts = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
             for k in SETTLED_KEYS for v in [dataset.get(k)]}
    return SettledData(data_spec(dataset, side, sizes, data_bytes), splits, facts)


def _idx_spec(cfg: DictConfig, side: int) -> DataSpec:
    """The facts of an IDX dataset from its YAML and its label file's header (the images are read by the build)."""
    dataset = cfg.dataset
    n = idx_train_size(dataset)
    known = n or KNOWN_TRAIN_SIZES.get(str(dataset.name)) or 60_000
    data_bytes = (known + DEFAULT_IDX_TEST) * IDX_IMAGE_BYTES
    return data_spec(dataset, side, {"train": n, "test": None}, data_bytes)


def data_spec(dataset: DictConfig, side: int, sizes: dict[str, int | None], data_bytes: int) -> DataSpec:
    """The frozen facts of a settled ``dataset`` group."""
    def floats(value) -> tuple[float, ...] | None:
        if value is None:
            return None
        many = OmegaConf.is_list(value) or isinstance(value, list)
        return tuple(float(v) for v in value) if many else (float(value),)

    classes = dataset.get("classes")
    return DataSpec(
        name=str(dataset.name), format=data_format(dataset), side=side, channels=int(dataset.in_channels),
        num_classes=int(dataset.num_classes), classes=None if classes is None else tuple(str(c) for c in classes),
        mean=floats(dataset.get("mean")) if dataset.get("normalize") else None,
        std=floats(dataset.get("std")) if dataset.get("normalize") else None,
        train_size=sizes["train"], val_size=int(dataset.get("val_size") or 0), test_size=sizes["test"],
        bytes=data_bytes)
