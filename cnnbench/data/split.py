"""Holding a validation split out of the training set: stratified by class, fixed by its own seed.

The split depends only on the labels, ``dataset.val_size`` and ``dataset.val_seed`` (never on
``trainer.seed``), so runs with different seeds, every job of a sweep and every rank under torchrun
hold out the same images.
"""

from __future__ import annotations

import torch

from .idx import Split


def class_quotas(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Per-class numbers of held-out examples summing exactly to ``total``, proportional to ``counts``
    (largest remainders get the leftover examples; ties go to the lower class index)."""
    n = int(counts.sum())
    exact = counts.double() * total / n  # (C,) fractional quotas
    quotas = exact.floor().long()
    leftover = total - int(quotas.sum())
    if leftover:
        remainders = exact - quotas.double()
        # stable sort, descending remainder: equal remainders keep class order
        order = torch.sort(-remainders, stable=True).indices
        quotas[order[:leftover]] += 1
    return quotas


def split_train_val(split: Split, val_size: int, seed: int) -> tuple[Split, Split]:
    """(train, validation): ``val_size`` examples of ``split`` held out, every class in proportion.

    Within each class the held-out examples are the first of a permutation drawn from a generator
    seeded with ``seed``; both parts keep the original order of the examples they hold.
    """
    labels = split.labels
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes)  # (C,)
    quotas = class_quotas(counts, val_size)
    gen = torch.Generator().manual_seed(int(seed))
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()  # (n_c,) indices of class c
        chosen = members[torch.randperm(len(members), generator=gen)[: int(quotas[c])]]
        held[chosen] = True
    return Split(split.images[~held], labels[~held]), Split(split.images[held], labels[held])
