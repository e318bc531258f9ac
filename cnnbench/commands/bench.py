"""``cnnbench bench``: cnnbench's trainer against a faithful copy of the book's pipeline, side by side.

For each recipe both pipelines run in this process, on the same device and the same data:

* steady state: examples/sec over ``--steps`` training steps after ``--warmup`` steps. For the book,
  the figure its own loop prints (time inside its timer only, so data-loading stalls are left out:
  flattering to the book, which makes the ratio conservative);
* end to end: wall time of an epoch of ``--epoch-batches`` batches (all of them by default) plus an
  evaluation of ``--eval-batches`` test batches, from reading the data and building the model to the
  last accuracy, as a user waits for it.

Achieved FLOP/s counts 3x the forward FLOPs per training example (forward + two backward matmuls) and
is compared with the device's dense matmul peak measured in the same run (before the first recipe and after
each one, the best kept); the step's bytes (op by op) against
the memory bandwidth measured in the same run give its roofline (:mod:`cnnbench.speed.roofline`): whether
arithmetic or memory traffic bounds the step, and how close the measured speed comes to that bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from ..fmt import add_data_root, command_parser

logger = logging.getLogger(__name__)



def book_recipes() -> list[str]:
    """The ``experiment=d2l_<model>`` presets in conf/, in the book's chapter order (the registry's)."""
    from ..config import config_dir
    from ..models import list_models

    return [f"d2l_{m}" for m in list_models() if (config_dir() / "experiment" / f"d2l_{m}.yaml").is_file()]


def fake_fashion_mnist(root: Path, n_train: int = 60_000, n_test: int = 10_000) -> Path:
    """Random IDX files of Fashion-MNIST's shape in torchvision's layout (for timing only)."""
    rng = np.random.default_rng(0)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        with (raw / f"{split}-images-idx3-ubyte").open("wb") as f:
            f.write(np.array([0x803, n, 28, 28], dtype=">u4").tobytes())
            f.write(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8).tobytes())
        with (raw / f"{split}-labels-idx1-ubyte").open("wb") as f:
            f.write(np.array([0x801, n], dtype=">u4").tobytes())
            f.write(rng.integers(0, 10, size=n, dtype=np.uint8).tobytes())
    return root


GENERATED = "generated"  # bench.json's "data" when the timing ran on generated data


def bench_data(data_root: str | None, fake: bool, tmp: Path) -> tuple[Path, str]:
    """The data both pipelines read (a root torchvision's FashionMNIST opens) and its source for the table
    and bench.json: the folder found from ``--data-root`` or the dataset search, else generated data of the
    same shape (in ``tmp``). Generated data that was not asked for (``--fake-data``) comes with a warning
    naming the flag: the timing runs either way, and nothing else in its output would say which data it read."""
    from ..data.idx import candidate_roots, find_data_root
    from .bench_accuracy import book_readable_root

    found = None if fake else find_data_root("FashionMNIST", data_root)
    if found is not None:
        return book_readable_root(found, tmp / "plain"), str(found)
    if fake:
        logger.info("--fake-data: timing on generated data of Fashion-MNIST's shape")
    else:
        searched = ", ".join(str(p.absolute()) for p in candidate_roots(data_root))
        logger.warning("no Fashion-MNIST found (searched %s): timing on GENERATED data of the same shape; give "
                       "--data-root DIR for the real data, or --fake-data to choose generated data", searched)
    return fake_fashion_mnist(tmp), GENERATED


def cnnbench_steady(cfg, warmup: int, steps: int) -> dict:
    """Examples/sec of cnnbench's loop over ``steps`` steps after ``warmup`` steps."""
    from ..devices import synchronize
    from ..models.configured import image_size, model_from_config
    from ..run.build import build_run
    from ..run.loop import LoopHooks, train_one_epoch
    from ..run.train import thread_count_kept
    from ..run.validate import validate_config
    from ..speed.roofline import step_bytes

    with tempfile.TemporaryDirectory() as tmp, thread_count_kept():  # the run's thread count stays the run's
        run = build_run(validate_config(cfg), Path(tmp))
        hooks = LoopHooks(log_points=set())
        common = dict(global_step=0, hooks=hooks)
        train_one_epoch(run.model, run.train_loader, run.optimizer, None, run.precision, epoch=0,
                        limit_batches=warmup, **common)
        synchronize(run.device)
        t0 = time.perf_counter()
        out = train_one_epoch(run.model, run.train_loader, run.optimizer, None, run.precision, epoch=1,
                              limit_batches=steps, **common)
        seconds = time.perf_counter() - t0  # train_one_epoch ends with a host read: the device is done
        dtype = torch.bfloat16 if run.speed.precision == "bf16" else torch.float16 if run.speed.precision == "fp16" \
            else torch.float32
        # the network as built from the config: the run's copy may carry CPU kernels that have no meta version
        moved = step_bytes(model_from_config(cfg), int(cfg.trainer.batch_size), int(cfg.dataset.in_channels),
                           image_size(cfg), dtype, run.speed.channels_last)
    return {"examples_per_sec": out.examples / seconds, "flops_per_image": run.flops, "bytes_per_step": moved,
            "threads": run.threads,
            "precision": run.speed.precision, "channels_last": run.speed.channels_last}


def cnnbench_end_to_end(cfg) -> dict:
    """Wall time of ``train()`` (data, model, one epoch, evaluation): what a user waits for."""
    from ..run.train import train

    with tempfile.TemporaryDirectory() as tmp:
        summary = train(cfg, Path(tmp))
    if summary["status"] != "completed":
        raise RuntimeError(f"cnnbench run did not complete: {summary['error']}")
    examples = summary["steps"] * cfg.trainer.batch_size
    return {"wall_time_s": summary["wall_time_s"], "examples": examples, "test/acc": summary["test/acc"]}


def book_run(cfg, root: Path, device: torch.device, epoch_batches: int | None, eval_batches: int | None,
             workers: int) -> dict:
    """The book's pipeline for one epoch of ``epoch_batches`` batches, end to end."""
    from ..book.pipeline import run_book
    from ..models.configured import image_size

    return run_book(cfg.model.name, 1, float(cfg.optimizer.lr), int(cfg.trainer.batch_size),
                    resize=image_size(cfg), root=root, device=device, max_batches=epoch_batches,
                    max_eval_batches=eval_batches, num_workers=workers)


def measure_recipe(recipe: str, root: Path, device_option: str, args: argparse.Namespace,
                   device: torch.device) -> dict:
    """Both pipelines on one recipe; one row of the table."""
    from ..config import compose_config
    from ..models.configured import image_size

    limits = [f"trainer.limit_train_batches={args.epoch_batches}"] if args.epoch_batches else []
    limits += [f"trainer.limit_eval_batches={args.eval_batches}"] if args.eval_batches else []
    cfg = compose_config([f"experiment={recipe}", f"dataset.root={root}", "dataset.download=false",
                          f"device={device_option}", f"device.type={device.type}", "trainer.epochs=1",
                          "trainer.checkpoint=false", "trainer.progress_bar=false",
                          # one fixed thread count for every recipe (the peaks were measured with it): a count
                          # that follows the load would time each recipe with another (override to change it)
                          f"device.num_threads={torch.get_num_threads()}", *limits, *args.override])
    logger.info("%s: cnnbench (device=%s)", recipe, device_option)
    steady = cnnbench_steady(cfg, args.warmup, args.steps)
    e2e = cnnbench_end_to_end(cfg)
    row = {"recipe": recipe, "model": cfg.model.name, "resize": image_size(cfg),
           "batch_size": int(cfg.trainer.batch_size), **{f"cnnbench/{k}": v for k, v in steady.items()},
           "cnnbench/e2e_wall_s": e2e["wall_time_s"],
           "cnnbench/e2e_examples_per_sec": e2e["examples"] / e2e["wall_time_s"]}
    if not args.no_book:
        logger.info("%s: the book's pipeline", recipe)
        book = book_run(cfg, root, device, args.epoch_batches, args.eval_batches, args.book_workers)
        row.update({"book/examples_per_sec": book["examples_per_sec_book"], "book/e2e_wall_s": book["wall_time_s"],
                    "book/e2e_examples_per_sec": book["examples"] / book["wall_time_s"]})
        row["speedup/steady"] = row["cnnbench/examples_per_sec"] / row["book/examples_per_sec"]
        row["speedup/e2e"] = row["cnnbench/e2e_examples_per_sec"] / row["book/e2e_examples_per_sec"]
    return row


def add_flop_rates(row: dict, peaks: dict[str, float], bandwidth: float | None = None) -> None:
    """Achieved training FLOP/s (3x forward) and its fraction of the measured matmul peak; with the measured
    memory ``bandwidth`` (bytes/s), the step's roofline (cnnbench.speed.roofline): which bound binds, and the
    fraction of that bound the measured step reaches."""
    from ..speed.roofline import Roofline

    achieved = 3 * row["cnnbench/flops_per_image"] * row["cnnbench/examples_per_sec"]
    row["cnnbench/tflops"] = achieved / 1e12
    peak = peaks[row["cnnbench/precision"] if row["cnnbench/precision"] in peaks else "fp32"]
    row["cnnbench/peak_fraction"] = achieved / peak
    if bandwidth and row.get("cnnbench/bytes_per_step"):
        batch = row["batch_size"]
        roof = Roofline(3 * row["cnnbench/flops_per_image"] * batch, row["cnnbench/bytes_per_step"], peak, bandwidth)
        row["roofline/bound"] = roof.bound
        row["roofline/bound_examples_per_sec"] = batch / roof.bound_s
        row["roofline/fraction"] = roof.fraction(batch / row["cnnbench/examples_per_sec"])
    if "book/examples_per_sec" in row:
        row["book/peak_fraction"] = 3 * row["cnnbench/flops_per_image"] * row["book/examples_per_sec"] / peaks["fp32"]


def table(rows: list[dict], peaks: dict[str, float], device_name: str, source: str = "",
          bandwidth: float | None = None) -> str:
    """Markdown table of the rows, below a line naming the device, its measured peaks and the data (``source``).
    "bound": what limits the step by its roofline (compute or memory); "% bound": the measured speed as a
    share of that bound's speed."""
    head = ["recipe", "res", "batch", "cnnbench ex/s", "book ex/s", "steady x", "cnnbench e2e s", "book e2e s",
            "e2e x", "TFLOP/s", "% peak", "GB/step", "bound", "% bound", "precision"]
    peak_text = ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in peaks.items())
    memory = f"; memory {bandwidth / 1e9:.1f} GB/s (copy)" if bandwidth else ""
    lines = [f"device: {device_name}; matmul peak: {peak_text}{memory}" + (f"; data: {source}" if source else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        g = r.get
        cells = [r["recipe"], r["resize"], r["batch_size"], f"{r['cnnbench/examples_per_sec']:,.0f}",
                 f"{g('book/examples_per_sec', float('nan')):,.0f}", f"{g('speedup/steady', float('nan')):.2f}",
                 f"{r['cnnbench/e2e_wall_s']:.1f}", f"{g('book/e2e_wall_s', float('nan')):.1f}",
                 f"{g('speedup/e2e', float('nan')):.2f}", f"{r['cnnbench/tflops']:.3f}",
                 f"{100 * r['cnnbench/peak_fraction']:.1f}",
                 f"{g('cnnbench/bytes_per_step', float('nan')) / 1e9:.2f}", g("roofline/bound", "-"),
                 f"{100 * g('roofline/fraction', float('nan')):.1f}",
                 r["cnnbench/precision"] + ("+CL" if r["cnnbench/channels_last"] else "")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


# (matrix side, matmuls timed) of the peak measurement, by (on the CPU, bf16): the best of the sizes is the peak.
# A CPU's bf16 matrix units reach their rate only on large matrices (a 2-core Xeon with AMX, 6 runs each:
# 0.43-0.46 TFLOP/s at 1024, 0.78-0.83 at 2048, 0.70-1.50 at 4096; fp32 0.21-0.24 at 1024), and the networks'
# convolutions ran faster than the 1024 figure
PEAK_SIZES = {(True, False): ((1024, 3), (2048, 1)), (True, True): ((1024, 3), (2048, 2), (4096, 1)),
              (False, False): ((2048, 20), (4096, 5)), (False, True): ((2048, 20), (4096, 5))}


def measure_peaks(device: torch.device, best: dict[str, float] | None = None,
                  bandwidth: float | None = None) -> tuple[dict[str, float], float]:
    """The device's dense matmul peaks (fp32, and bf16 where it trains in it) and memory bandwidth, measured now,
    each the larger of this measurement and ``best`` / ``bandwidth`` (earlier ones)."""
    from ..devices import bf16_supported
    from ..speed.roofline import measure_bandwidth
    from ..speed.settings import peak_matmul_flops

    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if bf16_supported(device) else {})}
    peaks = {}
    for name, dtype in dtypes.items():
        sizes = PEAK_SIZES[device.type == "cpu", dtype == torch.bfloat16]
        measured = max(peak_matmul_flops(device, dtype, n=n, iters=iters) for n, iters in sizes)
        peaks[name] = max(measured, (best or {}).get(name, 0.0))
    return peaks, max(measure_bandwidth(device), bandwidth or 0.0)


def _parser() -> argparse.ArgumentParser:
    p = command_parser("cnnbench bench", __doc__)
    p.add_argument("recipes", nargs="*", default=None, help="experiment names (default: the eight book recipes)")
    p.add_argument("--device", default="fast", help="cnnbench's device config option")
    p.add_argument("--on", default="auto", choices=["auto", "cpu", "cuda"], help="where both pipelines run")
    add_data_root(p, "--data", help="Fashion-MNIST's folder (none: $CNNBENCH_DATA and the dataset search; when "
                                    "they find nothing, generated data of the same shape, with a warning)")
    p.add_argument("--fake-data", action="store_true", help="time generated data of the same shape on purpose")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps before the timed ones")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--epoch-batches", type=int, default=None, help="batches in the end-to-end epoch (default: all)")
    p.add_argument("--eval-batches", type=int, default=None, help="test batches evaluated (default: all)")
    p.add_argument("--book-workers", type=int, default=4, help="the book's DataLoader workers")
    p.add_argument("--no-book", action="store_true", help="measure cnnbench only")
    p.add_argument("--out", default=None, help="folder for bench.md and bench.json (default: outputs/bench/TIME)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override for cnnbench (repeatable)")
    p.add_argument("--to-accuracy", type=float, default=None, metavar="A",
                   help="instead: run each recipe until its test accuracy reaches A (trainer.target_acc) and "
                        "tabulate the time, beside the book's LeNet-BN recipe through the book's loop")
    return p


def cmd_bench(argv: Sequence[str]) -> int:
    """Entry point of ``cnnbench bench``."""
    from ..devices import resolve_device
    from .bench_accuracy import run as run_to_accuracy

    args = _parser().parse_args(argv)
    args.recipes = args.recipes or (["fast_cpu"] if args.to_accuracy is not None else book_recipes())
    device = resolve_device(args.on)
    out = Path(args.out or f"outputs/bench/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    out.mkdir(parents=True, exist_ok=True)
    if args.to_accuracy is not None:
        return run_to_accuracy(args, args.recipes, device, out)
    with tempfile.TemporaryDirectory() as tmp:
        root, source = bench_data(args.data_root, args.fake_data, Path(tmp))
        peaks, bandwidth = measure_peaks(device)
        rows = []
        for recipe in args.recipes:
            rows.append(measure_recipe(recipe, Path(root), args.device, args, device))
            logger.info("%s", json.dumps({k: v for k, v in rows[-1].items() if "speedup" in k or "examples" in k}))
            # measured again after each recipe, the best kept: one slow moment of a shared machine would
            # otherwise lower the peak, and every "% peak" with it
            peaks, bandwidth = measure_peaks(device, peaks, bandwidth)
        for row in rows:
            add_flop_rates(row, peaks, bandwidth)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    text = table(rows, peaks, name, source, bandwidth)
    print(text)
    (out / "bench.md").write_text(text + "\n")
    (out / "bench.json").write_text(json.dumps({"device": name, "data": source, "peaks": peaks,
                                                "bandwidth": bandwidth, "rows": rows,
                                                "args": vars(args)}, indent=2) + "\n")
    logger.info("wrote %s and %s", out / "bench.md", out / "bench.json")
    return 0
