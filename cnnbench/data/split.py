"""A validation split held out of the training split: stratified by class, seeded, reproducible.

``split_train_val(train, val_size, seed)`` is how ``cnnbench eval --split val`` rebuilds a run's
validation images from its config (``dataset.val_size``, ``dataset.val_seed``).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .idx import Split


def _val_count(val_size: int | float, n: int) -> int:
    """``val_size`` as a number of examples: a count (int >= 1) or a fraction of ``n`` (0 < float < 1)."""
    if isinstance(val_size, float) and 0 < val_size < 1:
        return round(val_size * n)
    if float(val_size).is_integer() and 0 < int(val_size) < n:
        return int(val_size)
    raise ConfigError(f"dataset.val_size must be a count between 1 and {n - 1} or a fraction in (0, 1), "
                      f"got {val_size!r}")


def _per_class_counts(class_sizes: torch.Tensor, total: int) -> torch.Tensor:
    """How many validation examples each class gives: proportional to its size, summing to ``total``
    (largest remainders get the rounding's leftovers, ties to the lower class index)."""
    exact = class_sizes.double() * total / class_sizes.sum()  # (C,)
    counts = exact.floor().long()
    leftover = total - int(counts.sum())
    order = torch.argsort(exact - counts, descending=True, stable=True)
    counts[order[:leftover]] += 1
    return counts


def split_train_val(split: Split, val_size: int | float, seed: int) -> tuple[Split, Split]:
    """(train, val): ``val_size`` examples drawn per class in proportion (seeded by ``seed``) become the
    validation split; the rest, in their original order, stay for training."""
    n = len(split)
    labels = split.labels  # (N,) int64
    classes = int(labels.max()) + 1
    counts = _per_class_counts(torch.bincount(labels, minlength=classes), _val_count(val_size, n))
    gen = torch.Generator().manual_seed(int(seed))
    held = torch.zeros(n, dtype=torch.bool)
    for c in range(classes):
        members = torch.nonzero(labels == c).flatten()  # indices of class c, ascending
        chosen = members[torch.randperm(len(members), generator=gen)[: int(counts[c])]]
        held[chosen] = True
    keep = ~held
    return (Split(split.images[keep], labels[keep]), Split(split.images[held], labels[held]))
