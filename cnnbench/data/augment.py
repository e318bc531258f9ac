"""Training-time augmentation on the device: batched tensor operations, no per-image Python.

Each batch's random numbers (which images flip, where each crop lands, which rectangle is erased) are
drawn on the host from a generator seeded by (seed, epoch, batch), for the whole global batch, and
each rank takes its shard of them. So a batch is augmented the same way whether the run was resumed
in the middle of the epoch or not, and whether one process or several trained it. Evaluation is
never augmented.

The operations, in this order, on (B, C, S, S) images in [0, 1] (before normalization, so padding and
erased pixels are black, Fashion-MNIST's background):

- horizontal flip with probability ``flip`` (label-preserving for clothes, shoes and bags);
- random crop: pad by ``crop_padding`` pixels on each side, cut an S x S window at a random offset;
- random erasing (Zhong et al. 2017) with probability ``erase``: a rectangle of ``erase_scale`` of the
  image's area and aspect ratio in ``erase_ratio`` (log-uniform) set to ``erase_value``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..schema import FlipCropConfig, Section, StrongAugmentConfig

# Keeps augmentation seeds apart from the epoch permutation's (seed * 1_000_003 + epoch).
SALT = 0x5DEECE66D


@dataclass(frozen=True)
class Draws:
    """The random numbers of one batch, host tensors indexed by example."""

    flip: torch.Tensor  # (B,) bool
    crop: torch.Tensor  # (B, 2) int64: top and left offsets into the padded image, 0..2*padding
    erase: torch.Tensor  # (B,) bool
    box: torch.Tensor  # (B, 4) int64: top, left, height, width of the erased rectangle

    def __getitem__(self, index: torch.Tensor) -> Draws:
        return Draws(self.flip[index], self.crop[index], self.erase[index], self.box[index])


@dataclass(frozen=True)
class Augment:
    """The ``augment`` config group as an operation on batches."""

    flip: float = 0.0  # probability of a horizontal flip
    crop_padding: int = 0  # pixels added on each side before the random crop
    erase: float = 0.0  # probability of erasing a rectangle
    erase_scale: tuple[float, float] = (0.02, 0.25)  # its area, as a fraction of the image's
    erase_ratio: tuple[float, float] = (0.3, 3.3)  # its height / width
    erase_value: float = 0.0  # the value written there (in [0, 1] pixel units)

    @classmethod
    def from_config(cls, cfg: Section | None) -> Augment | None:
        """The ``augment`` section (its schema's object: :class:`FlipCropConfig`, :class:`StrongAugmentConfig`)
        as an operation; None for ``augment=none`` (the book's way: batches exactly as without this module)."""
        if not isinstance(cfg, FlipCropConfig):
            return None
        strong = cfg if isinstance(cfg, StrongAugmentConfig) else None  # erasing: augment=strong only
        return cls(flip=float(cfg.flip), crop_padding=int(cfg.crop_padding),
                   **({} if strong is None else dict(
                       erase=float(strong.erase), erase_scale=tuple(strong.erase_scale),
                       erase_ratio=tuple(strong.erase_ratio), erase_value=float(strong.erase_value))))

    @staticmethod
    def generator(seed: int, epoch: int, batch: int) -> torch.Generator:
        """The host generator of one (seed, epoch, batch): independent of everything else drawn."""
        return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + batch + SALT)

    def draw(self, n: int, side: int, gen: torch.Generator) -> Draws:
        """Every random number a batch of ``n`` images of ``side`` pixels needs (always all of them, so
        the stream does not depend on which operations are on)."""
        flip = torch.rand(n, generator=gen) < self.flip
        crop = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=gen)
        erase = torch.rand(n, generator=gen) < self.erase
        u = torch.rand(n, 4, generator=gen, dtype=torch.float64)  # area, log-ratio, top, left
        area = side * side * (self.erase_scale[0] + u[:, 0] * (self.erase_scale[1] - self.erase_scale[0]))
        log_lo, log_hi = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        ratio = torch.exp(log_lo + u[:, 1] * (log_hi - log_lo))
        h = (area * ratio).sqrt().round().clamp(1, side).long()
        w = (area / ratio).sqrt().round().clamp(1, side).long()
        top = (u[:, 2] * (side - h + 1)).floor().long()
        left = (u[:, 3] * (side - w + 1)).floor().long()
        return Draws(flip, crop, erase, torch.stack([top, left, h, w], dim=1))

    def apply(self, x: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Augment (B, C, S, S) images in [0, 1] on their device."""
        device = x.device
        if self.flip > 0:
            x = torch.where(draws.flip.to(device)[:, None, None, None], x.flip(-1), x)
        if self.crop_padding > 0:
            x = random_crop(x, draws.crop.to(device), self.crop_padding)
        if self.erase > 0:
            x = erase_boxes(x, draws.box.to(device), draws.erase.to(device), self.erase_value)
        return x


def random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad (B, C, S, S) by ``padding`` and cut an S x S window per image at ``offsets`` (B, 2),
    with two gathers (rows, then columns) instead of a loop over images."""
    b, c, s, _ = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, S+2p, S+2p)
    span = torch.arange(s, device=x.device)
    rows = (offsets[:, 0, None] + span)[:, None, :, None].expand(b, c, s, s + 2 * padding)
    x = padded.gather(2, rows)  # (B, C, S, S+2p)
    cols = (offsets[:, 1, None] + span)[:, None, None, :].expand(b, c, s, s)
    return x.gather(3, cols)  # (B, C, S, S)


def erase_boxes(x: torch.Tensor, boxes: torch.Tensor, apply: torch.Tensor, value: float) -> torch.Tensor:
    """Set the rectangle ``boxes`` (B, 4: top, left, height, width) of each image where ``apply`` (B,)."""
    s = x.shape[-1]
    ys = torch.arange(s, device=x.device)[None, :, None]  # (1, S, 1)
    xs = torch.arange(s, device=x.device)[None, None, :]  # (1, 1, S)
    top, left, h, w = (boxes[:, i, None, None] for i in range(4))  # each (B, 1, 1)
    inside = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w) & apply[:, None, None]  # (B, S, S)
    return x.masked_fill(inside[:, None], value)
