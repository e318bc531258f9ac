"""Your own pictures: torchvision's ImageFolder layout, decoded once into a cache of uint8 tensors.

``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (and optionally ``ROOT/val/<class>/*``), any of
torchvision's image extensions (PNG, JPEG, BMP, WebP, TIFF, PPM/PGM), any size, grey, RGB or palette.
The class names are the sorted folder names of ``train`` and the files of each class are found
recursively and sorted, as ``torchvision.datasets.ImageFolder`` does (a test checks the two agree); the
listing is written here because importing torchvision costs 1.6-4 s of every start, and hidden files
(``.DS_Store``, macOS's ``._photo.jpg``) are left out where ImageFolder would fail on them.

Decoding tens of thousands of files takes a while, so it happens once: Pillow decodes in worker
processes (with a progress bar) and the result is saved under ``<cache root>/image_folders/``, keyed
by the file list, sizes and modification times (never inside the user's folder). Later runs, and every
job of a sweep, read the saved tensors. Pictures are read as torchvision's ``default_loader`` reads
them (``convert("RGB")``, or ``"L"`` for one channel: alpha is dropped); a picture counts as colour
when its red, green and blue differ somewhere, so an RGB file of a grey picture stays grey.

Storage size: when every image has one size no larger than ``dataset.image_size`` (by default the run's
input side; Fashion-MNIST PNGs, CIFAR, most prepared datasets) they are kept as they are; otherwise
(sizes that differ, or big photographs) each is resized (Pillow bilinear, antialiased) to
``dataset.image_size`` pixels a side. The loader resizes to the run's side on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import cache_root
from ..errors import ConfigError, DataError
from ..runfolder.disk import atomic_path
from .idx import Split

logger = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS (tests/data/test_folder.py checks they stay equal)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")  # sub-folders of dataset.path; val is optional
CACHE_DIR = "image_folders"
CACHE_VERSION = 2  # bump when what is stored changes
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"}
SERIAL_BELOW = 512  # files: fewer are decoded in this process (a pool's start costs more)
MAX_WORKERS = 16
SHOWN = 3  # file names quoted in a message


@dataclass(frozen=True)
class Listing:
    """The files of an image folder, in ImageFolder's order, and what keys their cache."""

    root: Path
    classes: list[str]  # sorted folder names of train/
    files: dict[str, list[tuple[str, int]]]  # split -> [(path relative to root, class index)]
    key: str  # sha256 of the relative paths, sizes and modification times

    def paths(self, split: str) -> list[Path]:
        return [self.root / rel for rel, _ in self.files.get(split, [])]


def _image_files(folder: str) -> list[tuple[str, int, int]]:
    """(path, bytes, modification ns) of the image files below ``folder``, recursively (symbolic links
    followed, as ImageFolder), in os.walk's order with names sorted: ImageFolder's order."""
    found = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir():
            continue
        if e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file():
            st = e.stat()
            found.append((e.path, st.st_size, st.st_mtime_ns))
    for e in entries:  # os.walk gives a folder's files before its sub-folders' files
        if e.is_dir() and not e.name.startswith("."):
            found += _image_files(e.path)
    return found


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _shown(names: Iterable[str]) -> str:
    names = list(names)
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def list_folder(path: str | None) -> Listing:
    """Check the layout and list every image; each problem is one DataError naming the folder or class."""
    if not path:
        raise ConfigError("dataset=image_folder needs dataset.path=ROOT, a folder holding train/<class>/ and "
                          "test/<class>/ sub-folders of images")
    root = Path(path).expanduser().absolute()
    if not root.exists():
        raise DataError(f"dataset.path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"dataset.path {root} is a file, not a folder of train/<class>/ and test/<class>/ images")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            found = _shown(_class_folders(root)) or "nothing"
            raise DataError(f"{root} has no {split}/ folder (found: {found}); the layout is "
                            f"{root}/train/<class>/*.png and {root}/test/<class>/*.png (and optionally val/)")
    classes = _class_folders(root / "train")
    index = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {}
    empty: dict[str, list[str]] = {}
    stats: dict[str, list[str]] = {s: [] for s in SPLITS}  # "bytes\0modification ns" of each file, in order
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        names = classes if split == "train" else _class_folders(folder)  # train/ is listed once
        unknown = [c for c in names if c not in index]
        if unknown:
            raise DataError(f"{folder} has class folder{'s' if len(unknown) > 1 else ''} {_shown(unknown)} that "
                            f"{root / 'train'} does not have: a network cannot learn a class it never sees "
                            "(add its training images, or remove the folder)")
        files[split] = []
        for name in names:
            images = _image_files(str(folder / name))
            if not images:
                empty.setdefault(split, []).append(name)
            cut = len(str(root)) + 1  # the paths start with ROOT/
            files[split] += [(p[cut:], index[name]) for p, _, _ in images]
            stats[split] += [f"{size}\0{mtime}" for _, size, mtime in images]
    extensions = " ".join(IMG_EXTENSIONS)
    if not any(files.values()):
        raise DataError(f"{root} holds no images at all (extensions read: {extensions})")
    for split, names in empty.items():
        raise DataError(f"{root / split}: empty class folder{'s' if len(names) > 1 else ''} {_shown(names)} "
                        f"(no images with the extensions {extensions})")
    for split in ("train", "test"):
        if not files[split]:
            raise DataError(f"{root / split} holds no class folders with images; put each class's images in "
                            f"{split}/<class>/")
    if not files.get("val"):
        files.pop("val", None)  # an empty val/ folder: no validation split from the folder
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for split, entries in files.items():
        lines = (f"{split}\0{rel}\0{label}\0{st}\n" for (rel, label), st in zip(entries, stats[split], strict=True))
        digest.update("".join(lines).encode())
    return Listing(root, classes, files, digest.hexdigest())


# ------------------------------------------------------------------------------------------- decoding


def decode_image(path: str, channels: int | None, size: tuple[int, int] | None) -> tuple[np.ndarray, bool] | str:
    """((C, H, W) uint8, whether it has colour) of one file, or the reason it cannot be read.

    ``channels`` 1 or 3 converts (Pillow's ITU-R 601 luma, or grey repeated); None keeps a grey picture
    at one channel and a colour one at three. ``size`` (height, width) resizes when the file differs.
    """
    decoded = _decode(path, channels, size, None)
    return decoded if isinstance(decoded, str) else decoded[:2]


def _decode(path: str, channels: int | None, size: tuple[int, int] | None,
            cap: int | None) -> tuple[np.ndarray, bool, tuple[int, int]] | str:
    """:func:`decode_image` plus the file's own (height, width); ``cap``: a picture larger than ``cap`` on
    a side is resized to ``cap`` square (so a first decode of unknown sizes never holds full photographs)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            own = (im.height, im.width)
            if size is None and cap is not None and max(own) > cap:
                size = (cap, cap)
            im.load()  # the whole file: a truncated one fails here
            rgb = None if im.mode in GREY_MODES else np.asarray(im.convert("RGB"))
            colour = rgb is not None and bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())
            keep_colour = channels == 3 or (channels is None and colour)
            out = im.convert("RGB") if keep_colour else im.convert("L")
            if size is not None and (out.height, out.width) != size:
                out = out.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # antialiased when shrinking
            array = np.asarray(out, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - a truncated, corrupt or foreign file: named and skipped (or refused)
        return _reason(exc)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    if channels == 3 and array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    return np.ascontiguousarray(array), colour, own


def _resized(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) uint8 resized to ``size`` (height, width) as :func:`_decode` resizes (Pillow bilinear)."""
    from PIL import Image

    if array.shape[1:] == size:
        return array
    planes = [np.asarray(Image.fromarray(plane).resize((size[1], size[0]), Image.Resampling.BILINEAR))
              for plane in array]  # per channel: the same filter as on an RGB picture
    return np.stack(planes)


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return "not an image Pillow can read" if "cannot identify image file" in text else text


def _decode_one(args: tuple[str, int | None, tuple[int, int] | None, int | None]):
    return _decode(*args)


def _executor(n: int, workers: int | None) -> Executor | None:
    """Worker processes for ``n`` files (None: decode here). Forked where the platform allows, so a
    worker does not import torch again."""
    count = workers or min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                           else os.cpu_count() or 1)
    if n < SERIAL_BELOW or count <= 1:
        return None
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=count, mp_context=context)


def _map(fn: Callable, items: list, workers: int | None, what: str) -> Iterator:
    """``fn`` over ``items`` in order, in worker processes for many, with a progress bar."""
    from tqdm.auto import tqdm

    pool = _executor(len(items), workers)
    chunk = max(1, min(256, len(items) // (8 * (getattr(pool, "_max_workers", 1) or 1))))
    with tqdm(total=len(items), desc=what, unit="img", disable=len(items) < SERIAL_BELOW, leave=False) as bar:
        if pool is None:
            for item in items:
                yield fn(item)
                bar.update()
            return
        with pool:
            for result in pool.map(fn, items, chunksize=chunk):
                yield result
                bar.update()


# -------------------------------------------------------------------------------------------- the data


@dataclass
class FolderData:
    """What an image folder decodes to: the splits, the class names, what was skipped."""

    classes: list[str]
    splits: dict[str, Split]  # train, test and (when ROOT/val exists) val; images (N, C, H, W) uint8
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    grey: int = 0  # images read as grey
    colour: int = 0  # images read as colour

    @property
    def channels(self) -> int:
        return int(self.splits["train"].images.shape[1])


def _split_channels(listing: Listing, results: list) -> dict[str, tuple[int, int]]:
    """split -> (grey images, colour images) among the decoded ones."""
    counts: dict[str, list[int]] = {s: [0, 0] for s in listing.files}
    i = 0
    for split, entries in listing.files.items():
        for _ in entries:
            result = results[i]
            i += 1
            if not isinstance(result, str):
                counts[split][int(result[1])] += 1
    return {s: (g, c) for s, (g, c) in counts.items()}


MISSING = "missing"  # no record of the files' sizes yet


def storage_size(own: tuple[int, int] | None, image_size: int) -> tuple[int, int] | None:
    """The (height, width) every image is stored at: None (as they are) when they share one size ``own``
    no larger than ``image_size``; else ``image_size`` square (sizes that differ, or big pictures that
    would fill the device's memory at full size only to be shrunk for every batch)."""
    return None if own is not None and max(own) <= image_size else (image_size, image_size)


def _index(listing: Listing) -> Path:
    return cache_root() / CACHE_DIR / f"{listing.key}.json"


def _own_size(listing: Listing) -> tuple[int, int] | None | str:
    """The one (height, width) the files share, None when they differ, MISSING before a first decode."""
    try:
        size = json.loads(_index(listing).read_text())["size"]
    except (OSError, ValueError, KeyError):
        return MISSING
    return None if size is None else (int(size[0]), int(size[1]))


def _write_own_size(listing: Listing, own: tuple[int, int] | None) -> None:
    index = _index(listing)
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(index) as tmp:
            tmp.write_text(json.dumps({"size": None if own is None else list(own), "root": str(listing.root)}))
    except OSError as exc:
        logger.warning("could not write %s (%s)", index, exc)


def cache_file(listing: Listing, channels: int | None, size: tuple[int, int] | None) -> Path:
    shape = "native" if size is None else f"{size[0]}x{size[1]}"
    return cache_root() / CACHE_DIR / f"{listing.key}-{shape}-c{channels or 'auto'}.pt"


def decode_folder(listing: Listing, channels: int | None, size: tuple[int, int] | None | str,
                  workers: int | None, image_size: int | None = None) -> tuple[FolderData, tuple[int, int] | None]:
    """Decode every listed file (in worker processes, with a progress bar) into the splits' tensors, stored
    at ``size`` (None: as they are); ``size`` MISSING: sizes not known yet, decided here by
    :func:`storage_size` with ``image_size`` (pictures larger than it are shrunk in the workers). Returns
    the data and the one size all files share (None when they differ)."""
    known = size != MISSING
    cap = None if known else image_size
    items = [(str(p), channels, size if known else None, cap) for split in listing.files for p in listing.paths(split)]
    results = list(_map(_decode_one, items, workers, f"decoding {listing.root.name}"))
    owns = {r[2] for r in results if not isinstance(r, str)}
    own = next(iter(owns)) if len(owns) == 1 else None
    if not known:
        size = storage_size(own, image_size)
        if size is not None:  # the few not shrunk by the workers (no larger than the side) follow
            results = [r if isinstance(r, str) else (_resized(r[0], size), *r[1:]) for r in results]
    counts = _split_channels(listing, results)
    if channels is None:
        channels = 3 if any(c for _, c in counts.values()) else 1
        _check_split_channels(listing, counts)
    skipped, splits, i = [], {}, 0
    for split, entries in listing.files.items():
        arrays, labels = [], []
        for rel, label in entries:
            result = results[i]
            i += 1
            if isinstance(result, str):
                skipped.append((rel, result))
                continue
            array = result[0]
            if array.shape[0] != channels:  # a grey picture in a colour dataset: grey repeated
                array = np.repeat(array, channels, axis=0)
            arrays.append(array)
            labels.append(label)
        if not arrays:
            raise DataError(f"{listing.root / split}: none of its {len(entries)} images could be read "
                            f"({skipped[-1][0]}: {skipped[-1][1]})")
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:  # the recorded sizes do not hold (a file changed since): decode afresh
            raise DataError(f"{listing.root}: the images changed while being read; run again")
        splits[split] = Split(torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.long))
    grey = sum(g for g, _ in counts.values())
    colour = sum(c for _, c in counts.values())
    return FolderData(listing.classes, splits, skipped, grey, colour), own


def _check_split_channels(listing: Listing, counts: dict[str, tuple[int, int]]) -> None:
    """With dataset.channels=auto, train in colour and test all grey (or the other way round) is refused:
    a network trained on one would be measured on the other."""
    colour = {s for s, (_, c) in counts.items() if c}
    grey_only = {s for s, (g, c) in counts.items() if g and not c}
    if colour and grey_only:
        raise DataError(f"{listing.root}: mixed channel counts: {' and '.join(sorted(colour))} hold colour "
                        f"images but every image of {' and '.join(sorted(grey_only))} is grey; set "
                        "dataset.channels=3 (grey repeated) or dataset.channels=1 (colour made grey) to read "
                        "every split alike")


def _save(data: FolderData, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"version": CACHE_VERSION, "classes": data.classes, "skipped": data.skipped, "grey": data.grey,
              "colour": data.colour,
              "splits": {s: {"images": sp.images, "labels": sp.labels} for s, sp in data.splits.items()}}
    try:
        with atomic_path(path) as tmp:
            torch.save(record, tmp)
    except OSError as exc:  # a full or read-only cache: the run goes on, the next one decodes again
        logger.warning("could not write the decoded images to %s (%s); the next run decodes again", path, exc)


def _load(path: Path) -> FolderData | None:
    try:
        record = torch.load(path, weights_only=True)
        if record.get("version") != CACHE_VERSION:
            return None
        splits = {s: Split(d["images"], d["labels"]) for s, d in record["splits"].items()}
        return FolderData(list(record["classes"]), splits, [tuple(s) for s in record["skipped"]],
                          int(record["grey"]), int(record["colour"]))
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is decoded again, never trusted
        logger.warning("ignoring the damaged cache file %s (%s); decoding again", path, exc)
        return None


def load_folder(path: str | None, channels: int | None, image_size: int, on_bad_image: str = "skip",
                workers: int | None = None, listing: Listing | None = None) -> FolderData:
    """The image folder at ``path`` as tensors: from the cache when its files are unchanged, else
    decoded (and cached). ``channels`` None: 3 when any image has colour, else 1. ``listing``: the
    folder's :func:`list_folder`, when the caller listed it already."""
    start = time.perf_counter()
    listing = listing if listing is not None else list_folder(path)
    own = _own_size(listing)  # recorded by the first decode of these files
    size = MISSING if own == MISSING else storage_size(own, image_size)
    data = None if size == MISSING else _load(cache_file(listing, channels, size))
    count = sum(len(entries) for entries in listing.files.values())
    if data is not None:
        logger.info("%s: %d images read from the cache %s in %.1f s", listing.root, count,
                    cache_file(listing, channels, size), time.perf_counter() - start)
    else:
        data, own = decode_folder(listing, channels, size, workers, image_size)
        _write_own_size(listing, own)
        cached = cache_file(listing, channels, storage_size(own, image_size))
        _save(data, cached)
        logger.info("%s: %d images decoded in %.1f s, cached in %s", listing.root, count,
                    time.perf_counter() - start, cached)
    _report_skipped(listing, data, on_bad_image)
    if channels is None and data.grey and data.colour:
        logger.warning("%s: %d grey images among %d colour ones, read with their grey repeated on 3 channels",
                       listing.root, data.grey, data.colour)
    return data


def _report_skipped(listing: Listing, data: FolderData, on_bad_image: str) -> None:
    if not data.skipped:
        return
    rel, reason = data.skipped[0]
    if on_bad_image == "error":
        raise DataError(f"{listing.root / rel}: cannot be read ({reason}); "
                        f"{len(data.skipped)} unreadable image(s) in all. Remove or replace them, or skip them "
                        "with dataset.on_bad_image=skip")
    logger.warning("skipped %d unreadable image(s) of %s: %s (%s)%s", len(data.skipped), listing.root,
                   rel, reason, "; " + _shown(r for r, _ in data.skipped[1:]) if len(data.skipped) > 1 else "")
