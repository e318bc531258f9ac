"""Confusion matrices and what is read from them: per-class accuracy, precision, recall, F1, the most
confused pairs, and the class names of a run's dataset.

A confusion matrix here is a (C, C) int64 count with rows the true class and columns the predicted
class, so ``matrix[i, j]`` counts examples of class ``i`` predicted as ``j``; its trace over its sum is
the accuracy. Counting is one ``torch.bincount`` per batch on the device (:func:`confusion_counts`);
everything else runs once, on the host, on the finished counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .schema import DatasetConfig


def confusion_counts(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts of one batch, on the batch's device: ``labels`` and ``preds`` are (B,) int64."""
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)  # (C*C,)
    return flat.view(num_classes, num_classes)


def class_names(dataset: DatasetConfig) -> list[str]:
    """``dataset.classes`` of a run's (settled) ``dataset`` section; "0".."C-1" for a record written before
    the key existed."""
    names = getattr(dataset, "classes", None)
    count = int(dataset.num_classes)
    if names is None or len(names) != count:
        return [str(i) for i in range(count)]
    return [str(n) for n in names]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None  # None: no example (or no prediction) of the class


def per_class_accuracy(matrix: Sequence[Sequence[int]] | torch.Tensor, names: Sequence[str]) -> dict[str, float | None]:
    """Accuracy of each class (its recall: correct over examples of the class), keyed by class name."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    return {name: _ratio(float(m[i, i]), float(m[i].sum())) for i, name in enumerate(names)}


def per_class_stats(matrix: torch.Tensor, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per class: examples (support), precision, recall, F1 and accuracy (= recall, the book's per-class
    accuracy), keyed by class name."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    stats = {}
    for i, name in enumerate(names):
        tp, support, predicted = float(m[i, i]), float(m[i].sum()), float(m[:, i].sum())
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0 else 0.0)
        stats[name] = {"support": int(support), "precision": precision, "recall": recall, "f1": f1,
                       "accuracy": recall}
    return stats


def most_confused(matrix: torch.Tensor, names: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal counts, largest first: true class, predicted class, count, and the
    share of the true class's examples that went that way."""
    m = torch.as_tensor(matrix, dtype=torch.int64).clone()
    m.fill_diagonal_(0)
    pairs = []
    totals = torch.as_tensor(matrix, dtype=torch.int64).sum(dim=1)  # (C,) examples per true class
    for flat in torch.argsort(m.flatten(), descending=True, stable=True)[:k].tolist():
        i, j = divmod(flat, m.shape[1])
        if m[i, j] == 0:
            break
        pairs.append({"true": names[i], "predicted": names[j], "count": int(m[i, j]),
                      "share_of_true": float(m[i, j]) / float(totals[i])})
    return pairs
