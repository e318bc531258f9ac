"""``cnnbench bench --to-accuracy A RECIPES``: how long each recipe takes to reach test accuracy A.

Each recipe runs as ``cnnbench train experiment=RECIPE trainer.target_acc=A`` would (its own epochs as
the limit), in this process, on the real data; the book's batch-normalized LeNet recipe runs through
the book's own loop (:mod:`cnnbench.book.pipeline`) in the same command as the reference. Times are wall
seconds from the start of the run (data reading and evaluations included) to the end of the first
evaluation at or above A.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError

logger = logging.getLogger(__name__)

BOOK_REFERENCE = "d2l_lenet_bn"  # the book's fastest recipe to a useful accuracy on a CPU


def cnnbench_to_accuracy(recipe: str, target: float, root: Path, device_option: str, overrides: list[str]) -> dict:
    """One recipe run with ``trainer.target_acc``: reached or not, time, epochs, accuracy."""
    from ..config import compose_config
    from ..run.train import train

    cfg = compose_config([f"experiment={recipe}", f"dataset.root={root}", "dataset.download=false",
                          f"device={device_option}", f"trainer.target_acc={target}", "trainer.checkpoint=false",
                          "trainer.progress_bar=false", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, Path(tmp))
    if summary["status"] != "completed":
        raise RuntimeError(f"{recipe} did not complete: {summary['error']}")
    reached = summary["time_to_target_s"] is not None
    return {"recipe": recipe, "pipeline": "cnnbench", "reached": reached,
            "time_to_target_s": summary["time_to_target_s"], "epochs": summary["epochs_completed"],
            "max_epochs": summary["epochs"], "test/acc": summary["test/acc"], "wall_time_s": summary["wall_time_s"]}


def book_to_accuracy(target: float, root: Path, device: torch.device, workers: int) -> dict:
    """The book's LeNet-BN recipe through the book's loop, with the wall time of each epoch's end."""
    from ..book.pipeline import run_book
    from ..config import compose_config

    recipe = compose_config([f"experiment={BOOK_REFERENCE}"])
    epochs: list[tuple[float, float]] = []  # (wall seconds since start, test acc) per epoch
    result = run_book(recipe.model.name, int(recipe.trainer.epochs), float(recipe.optimizer.lr),
                      int(recipe.trainer.batch_size), root=root, device=device, num_workers=workers,
                      on_epoch=lambda epoch, metrics, seconds: epochs.append((seconds, metrics["test/acc"])))
    first = next(((s, e + 1) for e, (s, acc) in enumerate(epochs) if acc >= target), None)
    return {"recipe": f"{BOOK_REFERENCE} (the book's loop)", "pipeline": "book", "reached": first is not None,
            "time_to_target_s": first[0] if first else None, "epochs": first[1] if first else len(epochs),
            "max_epochs": int(recipe.trainer.epochs), "test/acc": result["test/acc"],
            "wall_time_s": result["wall_time_s"]}


def table(rows: list[dict], target: float) -> str:
    """Markdown: recipe, reached, seconds to the target, epochs, final test accuracy, whole run."""
    head = ["recipe", f"reached {target:g}", "time to target (s)", "epochs", "test acc", "whole run (s)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        time_cell = f"{r['time_to_target_s']:.1f}" if r["reached"] else "-"
        epochs = f"{r['epochs']}" if r["reached"] else f"{r['epochs']} (all)"
        lines.append(f"| {r['recipe']} | {'yes' if r['reached'] else 'no'} | {time_cell} | {epochs} | "
                     f"{r['test/acc']:.4f} | {r['wall_time_s']:.1f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace, recipes: list[str], device: torch.device, out: Path) -> int:
    """The command: every recipe, then the book's reference; prints and writes the table."""
    from ..data.idx import find_data_root

    found = find_data_root("FashionMNIST", args.data_root)
    if found is None:
        raise DataError("--to-accuracy needs the real Fashion-MNIST (accuracy on generated data means nothing): "
                        "give --data-root /path/to/data or set CNNBENCH_DATA")
    root = found.parent.parent if found.name == "raw" else found
    rows: list[dict[str, Any]] = []
    for recipe in recipes:
        logger.info("%s: to test accuracy %g", recipe, args.to_accuracy)
        rows.append(cnnbench_to_accuracy(recipe, args.to_accuracy, root, args.device, list(args.override)))
    if not args.no_book:

        with tempfile.TemporaryDirectory() as tmp:
            plain = book_readable_root(found, Path(tmp) / "plain")
            rows.append(book_to_accuracy(args.to_accuracy, plain, device, args.book_workers))
    text = table(rows, args.to_accuracy)
    print(text)
    (out / "bench_accuracy.md").write_text(text + "\n")
    (out / "bench_accuracy.json").write_text(json.dumps({"target": args.to_accuracy, "rows": rows,
                                                         "args": vars(args)}, indent=2) + "\n")
    logger.info("wrote %s", out / "bench_accuracy.md")
    return 0


def book_readable_root(found: Path, scratch: Path) -> Path:
    """A data root that torchvision's ``FashionMNIST`` (the book's reader) can open: the root above
    ``found`` when it holds the four plain files in ``<root>/FashionMNIST/raw``, else a plain copy in
    ``scratch`` (torchvision reads neither ``.gz`` files nor other layouts)."""
    from ..data.idx import IDX_FILES, idx_path, is_gzipped, write_plain_copy

    plain = not any(is_gzipped(idx_path(found, name)) for pair in IDX_FILES.values() for name in pair)
    if plain and found.name == "raw" and found.parent.name == "FashionMNIST":
        return found.parent.parent
    logger.info("writing plain copies of the IDX files in %s into %s for the book's reader", found, scratch)
    write_plain_copy(found, scratch / "FashionMNIST" / "raw")
    return scratch
