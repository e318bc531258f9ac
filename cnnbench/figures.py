"""The pictures of an evaluation: a row-normalized confusion matrix and a grid of the most confident
mistakes (the book's ``predict_ch3``, titled true -> predicted). Each function returns a matplotlib
figure, which :func:`save_png` writes or ``SummaryWriter.add_figure`` puts into TensorBoard.

matplotlib is imported inside the functions (``_pyplot``), so importing this module, and training
without pictures, costs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PNG_DPI = 100  # dots per inch of the written PNGs: sharp enough to read, small on disk


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: figures only go to files and TensorBoard
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(matrix: Any, names: Sequence[str], title: str = "confusion matrix") -> Any:
    """Rows true class, columns predicted; colour is the row-normalized share, each cell shows its count."""
    plt = _pyplot()
    counts = np.asarray(matrix, dtype=np.int64)  # (C, C)
    totals = counts.sum(axis=1, keepdims=True)  # (C, 1) examples per true class
    shares = counts / np.maximum(totals, 1)  # (C, C) each row sums to 1 (0 for an empty row)
    c = len(names)
    side = max(4.0, 0.55 * c + 2.2)  # inches: room for the class names on both axes
    fig, ax = plt.subplots(figsize=(side + 0.9, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(c), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(c), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    size = 8 if c <= 10 else 6
    for i in range(c):
        for j in range(c):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=size,
                        color="white" if shares[i, j] > 0.5 else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title}: accuracy {accuracy:.3f} on {counts.sum():,} images", fontsize=10)
    fig.tight_layout()
    return fig


def mistakes_figure(images: np.ndarray, true: Sequence[str], predicted: Sequence[str], probs: Sequence[float],
                    columns: int = 8, title: str = "most confident mistakes") -> Any:
    """A grid of images (N, H, W) uint8, light on dark, each titled "true -> predicted" and the
    predicted class's probability, like the book's predict_ch3."""
    plt = _pyplot()
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.75 * rows + 0.35), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(images[k], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{true[k]}\n-> {predicted[k]} {probs[k]:.2f}", fontsize=7, color="#b00020")
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_png(fig: Any, path: Path, keep_open: bool = False) -> Path:
    """Write ``fig`` as a PNG; close it unless it is still to be used (TensorBoard)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PNG_DPI)
    if not keep_open:
        close(fig)
    return path


def close(fig: Any) -> None:
    _pyplot().close(fig)
