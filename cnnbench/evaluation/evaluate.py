"""``cnnbench eval RUN_DIR``: evaluate a finished run (or every run of a sweep folder) from its own folder.

For one split it computes accuracy, loss, top-3 accuracy, per-class precision, recall, F1 and accuracy,
the confusion matrix and the most confused pairs, and writes into the run folder:

- ``eval/<split>.json``: all of the above, plus the mistakes shown in the picture;
- ``eval/<split>_confusion.png``: the row-normalized confusion matrix with counts;
- ``eval/<split>_mistakes.png``: the most confident mistakes, titled true -> predicted;

and adds both pictures and one precision-recall curve per class to the run's TensorBoard.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ..confusion import confusion_counts, most_confused, per_class_stats
from ..data import DeviceLoader
from ..errors import CnnbenchError, RunFolderError
from ..fmt import add_data_root, command_parser
from ..runfolder.log import write_json_atomic
from ..runfolder.names import EVAL_DIR, find_run_folders
from ..speed.precision import Precision
from .inference import SPLITS, LoadedRun, load_run

logger = logging.getLogger(__name__)

TOP_K = 3  # top-k accuracy reported beside top-1
MISTAKES_SHOWN = 16  # images in the mistakes grid (two rows of eight)
CONFUSED_PAIRS = 5  # most confused (true, predicted) pairs listed


@dataclass
class Predictions:
    """A whole split's outputs, on the CPU."""

    logits: torch.Tensor  # (N, C) float32
    labels: torch.Tensor  # (N,) int64

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)  # (N, C)


@torch.no_grad()
def predict_split(model: torch.nn.Module, loader: DeviceLoader, precision: Precision) -> Predictions:
    """Logits of every example in loader order; kept on the device and copied to the CPU once."""
    model.eval()
    logits, labels = [], []
    for x, y in loader.batches(epoch=0):
        with precision.autocast():
            logits.append(model(x).float())  # (B, C)
        labels.append(y)
    return Predictions(torch.cat(logits).cpu(), torch.cat(labels).cpu())


def evaluation_record(p: Predictions, names: Sequence[str]) -> dict[str, Any]:
    """Every number of the evaluation, JSON-ready."""
    pred = p.logits.argmax(dim=1)  # (N,)
    k = min(TOP_K, p.logits.shape[1])
    topk = p.logits.topk(k, dim=1).indices  # (N, k)
    matrix = confusion_counts(p.labels, pred, len(names))  # (C, C)
    return {
        "examples": int(p.labels.numel()),
        "accuracy": float((pred == p.labels).double().mean()),
        "loss": float(F.cross_entropy(p.logits.double(), p.labels)),
        f"top{k}_accuracy": float((topk == p.labels[:, None]).any(dim=1).double().mean()),
        "per_class": per_class_stats(matrix, names),
        "confusion_matrix": {"classes": list(names), "rows": "true class", "columns": "predicted class",
                             "counts": matrix.tolist()},
        "most_confused": most_confused(matrix, names, CONFUSED_PAIRS),
    }


def confident_mistakes(p: Predictions, n: int = MISTAKES_SHOWN) -> list[int]:
    """Indices of the ``n`` wrong predictions made with the highest probability, most confident first."""
    probs = p.probs
    conf, pred = probs.max(dim=1)  # (N,), (N,)
    wrong = torch.nonzero(pred != p.labels).flatten()
    order = torch.argsort(conf[wrong], descending=True, stable=True)
    return wrong[order[:n]].tolist()


def write_outputs(run: LoadedRun, split: str, images: torch.Tensor, p: Predictions,
                  record: dict[str, Any], tensorboard: bool = True) -> dict[str, Path]:
    """eval/<split>.json and its two pictures; the pictures and PR curves also into TensorBoard.
    ``images`` are the split's (N, H, W) or (N, C, H, W) uint8 images, in the order of ``p``."""
    from ..figures import close, confusion_image, mistakes_figure, save_png

    names = run.contract.classes
    out = run.run_dir / EVAL_DIR
    probs = p.probs  # (N, C)
    pred = probs.argmax(dim=1)  # (N,)
    shown = confident_mistakes(p)
    mistakes = [{"index": i, "true": names[int(p.labels[i])], "predicted": names[int(pred[i])],
                 "probability": float(probs[i, pred[i]])} for i in shown]
    record["mistakes_shown"] = mistakes
    title = f"{run.model_name}, {split} set"
    confusion = confusion_image(record["confusion_matrix"]["counts"], names, title=title)  # a Pillow image
    mistakes_fig = mistakes_figure(images[shown].numpy(), [m["true"] for m in mistakes],
                                   [m["predicted"] for m in mistakes], [m["probability"] for m in mistakes],
                                   title=f"{title}: most confident mistakes")  # a matplotlib figure
    paths = {"json": out / f"{split}.json"}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths["json"], record)
    paths["confusion"] = out / f"{split}_confusion.png"
    confusion.save(paths["confusion"])
    paths["mistakes"] = save_png(mistakes_fig, out / f"{split}_mistakes.png", keep_open=tensorboard)
    if tensorboard:
        _to_tensorboard(run, split, p, confusion, mistakes_fig)
        close(mistakes_fig)
    return paths


def _to_tensorboard(run: LoadedRun, split: str, p: Predictions, confusion: Any, mistakes_fig: Any) -> None:
    """The two pictures (group "vis", after the curves) and a precision-recall curve per class, at the
    checkpoint's step, in a new event file of the run folder."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    probs = p.probs
    with SummaryWriter(log_dir=str(run.run_dir)) as writer:
        writer.add_image(f"vis/eval_{split}_confusion", np.asarray(confusion), run.step, dataformats="HWC")
        writer.add_figure(f"vis/eval_{split}_mistakes", mistakes_fig, run.step, close=False)
        for c, name in enumerate(run.contract.classes):
            writer.add_pr_curve(f"pr_{split}/{c}_{name.replace('/', '-')}", p.labels == c, probs[:, c], run.step)


def evaluate_run(run_dir: Path, checkpoint: str, split: str, device: str, data_root: str | None,
                 tensorboard: bool = True) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate one run folder; returns the record written to eval/<split>.json and the files."""
    run = load_run(run_dir, checkpoint, device)
    images = run.split(split, data_root)
    preds = predict_split(run.model, run.loader(images), run.precision())
    record = {"run_dir": str(run.run_dir), "model": run.model_name, "split": split,
              "checkpoint": str(run.checkpoint), "step": run.step, "device": str(run.device),
              "precision": run.precision().name, "run_test_acc": run.summary.get("test/acc"),
              **evaluation_record(preds, run.contract.classes)}
    return record, write_outputs(run, split, images.images, preds, record, tensorboard)


def find_runs(root: Path) -> list[Path]:
    """``root`` itself when it is a run folder, else every run folder below it (a sweep's jobs)."""
    if not root.is_dir():
        return [root]  # load_run names the problem
    found = find_run_folders(root)
    if not found:
        raise RunFolderError(f"{root} is not a cnnbench run folder (no .hydra/config.yaml) and holds none")
    return found


def format_record(record: dict[str, Any]) -> str:
    """The console view: headline numbers, the per-class table, the most confused pairs."""
    k = next(key for key in record if key.startswith("top") and key.endswith("_accuracy"))
    lines = [f"{record['model']} on the {record['split']} set ({record['examples']:,} images, "
             f"{Path(record['checkpoint']).name}, step {record['step']}): accuracy {record['accuracy']:.4f}, "
             f"{k.replace('_', ' ')} {record[k]:.4f}, loss {record['loss']:.4f}"]
    width = max(len(n) for n in record["per_class"])
    lines.append(f"  {'class':<{width}}  precision  recall     F1  images")
    for name, s in record["per_class"].items():
        lines.append(f"  {name:<{width}}  {_num(s['precision']):>9}  {_num(s['recall']):>6}  {_num(s['f1']):>5}"
                     f"  {s['support']:>6}")
    pairs = ", ".join(f"{x['true']} -> {x['predicted']} {x['count']}" for x in record["most_confused"])
    lines.append(f"  most confused: {pairs or 'none'}")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def cmd_eval(args: Sequence[str]) -> int:
    """``cnnbench eval``: 0 when every run was evaluated, 1 when a job of a sweep failed, 2 for one run."""
    parser = command_parser("cnnbench eval", description=(
        "Evaluate a finished run from its own folder (or every run of a sweep folder): writes eval/<split>.json, "
        "eval/<split>_confusion.png and eval/<split>_mistakes.png into the run folder, and adds them to its "
        "TensorBoard."))
    parser.add_argument("run_dir", type=Path, help="a run folder, or a sweep folder holding run folders")
    parser.add_argument("--checkpoint", default="last", help="last, best, or a checkpoint's path")
    parser.add_argument("--split", default="test", choices=SPLITS, help="the split evaluated")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_data_root(parser)
    parser.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard events")
    ns = parser.parse_args(args)
    runs = find_runs(ns.run_dir)
    failed = 0
    for run_dir in runs:
        try:
            record, paths = evaluate_run(run_dir, ns.checkpoint, ns.split, ns.device, ns.data_root,
                                         not ns.no_tensorboard)
        except CnnbenchError as exc:
            if len(runs) == 1:
                raise
            failed += 1
            print(f"{run_dir}: error: {exc}")
            continue
        print(f"{run_dir}:\n{format_record(record)}")
        print("  wrote " + ", ".join(str(p) for p in paths.values()))
    if len(runs) > 1:
        print(f"{len(runs) - failed} of {len(runs)} runs evaluated")
    return 1 if failed else 0
