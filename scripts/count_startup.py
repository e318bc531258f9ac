"""Count what one ``cnnbench train`` does before its first step, and how long it takes to get there.

    python scripts/count_startup.py                       # a small picture folder of its own (4 classes)
    python scripts/count_startup.py --folder ROOT         # ROOT/train/<class>/*, ROOT/test/<class>/*
    python scripts/count_startup.py --png-from DATA DEST  # first write Fashion-MNIST (IDX under DATA) as PNGs

Runs ``cnnbench train dataset=image_folder dataset.path=ROOT ...`` in this process (model=lenet_bn,
one epoch of one batch, on the CPU, with a cache folder of its own unless ``--keep-cache``) and prints, up to
the first call of the epoch loop (``train_one_epoch``): the calls of each function in ``COUNTED``, the
listings (``os.scandir``/``os.listdir``) of ROOT/train and ROOT/test, the "normalization from ..." log lines,
and the seconds from the command's start to the first step. The counts come from ``sys.setprofile`` on the
functions' code objects, so a function imported by name elsewhere is counted too. ``--json`` prints one JSON
object instead of the table; ``--time-only`` counts nothing and gives the seconds alone (no profiler's overhead).
To measure another checkout (before a change), run this file with ``PYTHONPATH`` pointing at that checkout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

# (module, function): what the issue counts
COUNTED = [
    ("cnnbench.data.sources", "settle_dataset"),
    ("cnnbench.data.sources", "read_dataset"),
    ("cnnbench.data.folder", "folder_stamp"),
    ("cnnbench.data.folder", "list_folder"),
    ("cnnbench.data.sources", "channel_stats"),
    ("cnnbench.models.registry", "build_model"),
    ("cnnbench.run.validate", "validate_config"),
    ("cnnbench.run.validate", "check_values"),
    ("cnnbench.run.memory", "estimate_step_memory"),
]
FIRST_STEP = ("cnnbench.run.loop", "train_one_epoch")


def write_small_folder(root: Path, n_train: int = 16, n_test: int = 8, classes: int = 4, side: int = 28) -> Path:
    """ROOT/{train,test}/c<k>/<i>.png: grey pictures with a band whose row depends on the class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 50, (side, side), dtype=np.uint8)
                a[2 + 4 * c: 5 + 4 * c] = 220
                Image.fromarray(a).save(folder / f"{i:05d}.png")
    return root


def write_png_folder(data_root: Path, dest: Path) -> Path:
    """Fashion-MNIST's IDX files under ``data_root`` as DEST/<split>/<label>/<index>.png (70,000 files)."""
    from PIL import Image

    from cnnbench.config import compose_config
    from cnnbench.data.sources import read_dataset

    cfg = compose_config([f"dataset.root={data_root}", "dataset.download=false"])
    _, splits = read_dataset(cfg.dataset, 28)
    for split, data in splits.items():
        for c in range(10):
            (dest / split / f"{c}").mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(data.images.numpy(), data.labels.numpy(), strict=True)):
            Image.fromarray(image).save(dest / split / f"{int(label)}" / f"{i:05d}.png")
    return dest


class Counter:
    """Calls of the COUNTED functions until the first step, through ``sys.setprofile``."""

    def __init__(self) -> None:
        import importlib

        self.codes = {}
        self.counts: dict[str, int | None] = {}
        for module, name in [*COUNTED, FIRST_STEP]:
            fn = getattr(importlib.import_module(module), name, None)
            if fn is not None:
                self.codes[getattr(fn, "__wrapped__", fn).__code__] = name
            if (module, name) != FIRST_STEP:
                self.counts[name] = 0 if fn is not None else None  # None: no such function in this version
        self.first_step_at: float | None = None

    def __call__(self, frame, event, arg) -> None:
        if event != "call" or self.first_step_at is not None:
            return
        name = self.codes.get(frame.f_code)
        if name is None:
            return
        if (frame.f_code.co_name, name) == (FIRST_STEP[1], FIRST_STEP[1]):
            self.first_step_at = time.perf_counter()
        else:
            self.counts[name] += 1


def time_to_first_step(root: Path, extra: list[str], run_dir: Path) -> dict:
    """Seconds from ``main``'s call to the first step, without the profiler's overhead (nothing counted)."""
    import cnnbench.run.train as train_module
    from cnnbench.cli import main

    real = train_module.train_one_epoch
    first: list[float] = []

    def timed(*args, **kwargs):
        first.append(time.perf_counter())
        return real(*args, **kwargs)

    train_module.train_one_epoch = timed
    start = time.perf_counter()
    try:
        code = main(["train", *_overrides(root, run_dir), *extra])
    finally:
        train_module.train_one_epoch = real
    return {"exit_code": code, "seconds to the first step": round(first[0] - start, 2) if first else None}


def _overrides(root: Path, run_dir: Path) -> list[str]:
    return ["dataset=image_folder", f"dataset.path={root}", "model=lenet_bn", "device=cpu",
            "trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1",
            "trainer.progress_bar=false", "trainer.batch_size=16", "trainer.checkpoint=false",
            f"hydra.run.dir={run_dir}"]


def count(root: Path, extra: list[str], run_dir: Path) -> dict:
    """Run one ``cnnbench train`` on the picture folder ``root``; what it did before the first step."""
    listings = {"train": 0, "test": 0}
    watched = {str(root / "train"): "train", str(root / "test"): "test"}
    scandir, listdir = os.scandir, os.listdir

    def counted(real):
        def wrapper(path=".", *args, **kwargs):
            split = watched.get(os.path.abspath(os.fspath(path))) if not isinstance(path, int) else None
            if split is not None and counter.first_step_at is None:
                listings[split] += 1
            return real(path, *args, **kwargs)
        return wrapper

    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if counter.first_step_at is None and record.getMessage().startswith("normalization from"):
                lines.append(record.getMessage())

    from cnnbench.cli import main

    counter = Counter()
    handler = Lines()
    logging.getLogger("cnnbench").addHandler(handler)  # Hydra replaces the root's handlers
    os.scandir, os.listdir = counted(scandir), counted(listdir)
    start = time.perf_counter()
    sys.setprofile(counter)
    try:
        code = main(["train", *_overrides(root, run_dir), *extra])
    finally:
        sys.setprofile(None)
        os.scandir, os.listdir = scandir, listdir
        logging.getLogger("cnnbench").removeHandler(handler)
    first = counter.first_step_at
    return {"exit_code": code, **counter.counts, "listings of ROOT/train": listings["train"],
            "listings of ROOT/test": listings["test"], "normalization lines": len(lines),
            "seconds to the first step": None if first is None else round(first - start, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="an image folder (default: a small one written here)")
    parser.add_argument("--png-from", nargs=2, type=Path, metavar=("DATA", "DEST"),
                        help="write Fashion-MNIST's IDX files under DATA as PNGs in DEST first, and use DEST")
    parser.add_argument("--keep-cache", action="store_true", help="use the user's cache of decoded folders")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--time-only", action="store_true",
                        help="only the seconds to the first step, without the profiler that counts")
    parser.add_argument("overrides", nargs="*", help="more overrides for cnnbench train")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnbench-count-"))
    if not args.keep_cache:
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    if args.png_from:
        root = args.png_from[1].absolute()
        if not (root / "train").is_dir():
            write_png_folder(args.png_from[0], root)
    else:
        root = (args.folder or write_small_folder(work / "pictures")).absolute()
    result = (time_to_first_step if args.time_only else count)(root, args.overrides, work / "run")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value}")
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
