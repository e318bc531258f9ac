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
from dataclasses import dataclass
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
KEPT = 2  # datasets kept read in this process (the pre-launch checks and the run read the same one)
_READ: OrderedDict[str, tuple[list[str] | None, dict[str, Split]]] = OrderedDict()


@dataclass
class DataSplits:
    """The splits a run uses: train, validation (None without one) and test."""

    train: Split
    val: Split | None
    test: Split


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
    stamp = ""
    if fmt == "image_folder":  # images added or removed since: read again (a notebook's second run)
        from .folder import folder_stamp

        stamp = folder_stamp(dataset.get("path"))
    key = json.dumps([plain.get(k) for k in ("format", "folder", "root", "path", "channels",
                                             "image_size", "on_bad_image")] + [side, stamp], default=str)
    if key in _READ:
        _READ.move_to_end(key)
        return _READ[key]
    if fmt == "image_folder":
        from .folder import load_folder

        size = int(dataset.get("image_size") or side)
        data = load_folder(dataset.get("path"), _channels(dataset), size, str(dataset.get("on_bad_image", "skip")),
                           dataset.get("decode_workers"))
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


def load_splits(cfg: DictConfig) -> DataSplits:
    """Train, validation and test splits of a run's config: the val/ folder of an image folder, else
    ``dataset.val_size`` examples held out of train (stratified, seeded by ``dataset.val_seed``)."""
    dataset = cfg.dataset
    _, splits = read_dataset(dataset, input_side_of(cfg))
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


def settle_dataset(cfg: DictConfig) -> None:
    """Fill in what the config leaves to the data (see the module's docstring); idempotent. Bad data is
    one DataError or ConfigError sentence."""
    dataset = cfg.dataset
    fmt = data_format(dataset)
    if fmt == "idx" and not (dataset.get("normalize") and (dataset.get("mean") is None or dataset.get("std") is None)):
        return  # the MNIST family: everything is in its YAML
    classes, splits = read_dataset(dataset, input_side_of(cfg))
    where = dataset.get("path") or dataset.name
    if fmt == "image_folder" and dataset.name == "image_folder":  # the option's own name: say which folder
        dataset.name = Path(str(where)).expanduser().absolute().name  # what summary, report and TensorBoard show
    if classes is not None:
        _agree(dataset, "num_classes", len(classes), f"{where} has {len(classes)} classes")
        _agree(dataset, "classes", list(classes), f"{where}'s classes are {', '.join(classes[:10])}")
    train = splits["train"]
    channels = int(train.images.shape[1]) if train.images.dim() == 4 else 1
    _agree(dataset, "in_channels", channels, f"the images of {where} have {channels} channel(s)",
           "; set dataset.channels instead" if fmt == "image_folder" else "")
    if "val" in splits:
        size = len(splits["val"])
        if int(dataset.val_size or 0) not in (0, size):
            raise ConfigError(f"{where} has a val/ folder ({size} images), the validation split; leave "
                              f"dataset.val_size at 0 (got {dataset.val_size})")
        dataset.val_size = size
    if dataset.get("normalize") and (dataset.get("mean") is None or dataset.get("std") is None):
        mean, std = channel_stats(load_splits(cfg).train.images)  # after a val_size hold-out: training only
        dataset.mean, dataset.std = mean, std
        logger.info("normalization from %s's training images: mean %s, std %s", where, mean, std)
    for key in ("mean", "std"):
        value = dataset.get(key)
        if OmegaConf.is_list(value) and len(value) not in (1, channels):
            raise ConfigError(f"dataset.{key} has {len(value)} values but the images of {where} have {channels} "
                              f"channel(s): give one number, or one per channel")
