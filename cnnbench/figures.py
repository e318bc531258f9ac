"""The pictures of an evaluation: a row-normalized confusion matrix and a grid of the most confident
mistakes (the book's ``predict_ch3``, titled true -> predicted).

The confusion matrix is a Pillow image (:func:`confusion_image`, drawn at the end of every training run,
where matplotlib's import and layout cost a second); the mistakes grid is a matplotlib figure, which
:func:`save_png` writes or ``SummaryWriter.add_figure`` puts into TensorBoard. Both libraries are imported
inside the functions, so importing this module, and training without pictures, costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

PNG_DPI = 100  # dots per inch of the written PNGs: sharp enough to read, small on disk


def pyplot() -> Any:
    """matplotlib's pyplot on its file-only backend (imported on first use: it costs a second)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: figures only go to files and TensorBoard
    import matplotlib.pyplot as plt

    return plt


# matplotlib's "Blues" at five stops, (share, RGB): white for no examples, dark blue for all of them
_BLUES = ((0.0, (247, 251, 255)), (0.25, (198, 219, 239)), (0.5, (107, 174, 214)), (0.75, (33, 113, 181)),
          (1.0, (8, 48, 107)))


def _blue(share: float) -> tuple[int, int, int]:
    """The colour of a share in [0, 1], linear between the stops."""
    share = min(max(float(share), 0.0), 1.0)
    for (s0, c0), (s1, c1) in pairwise(_BLUES):
        if share <= s1:
            t = (share - s0) / (s1 - s0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return _BLUES[-1][1]


def _vertical_text(image: Any, xy: tuple[int, int], text: str, font: Any, fill: Any = "black") -> None:
    """``text`` turned a quarter left (read bottom to top), its top-left corner at ``xy``."""
    from PIL import Image, ImageDraw

    _, _, right, bottom = font.getbbox(text)
    strip = Image.new("L", (right + 2, bottom + 2), 0)
    ImageDraw.Draw(strip).text((1, 1), text, font=font, fill=255)
    strip = strip.rotate(90, expand=True)
    image.paste(Image.new("RGB", strip.size, fill), xy, strip)


def confusion_image(matrix: Any, names: Sequence[str], title: str = "confusion matrix") -> Any:
    """Rows true class, columns predicted; colour is the row-normalized share, each cell shows its count.

    An RGB ``PIL.Image`` drawn with Pillow: a training run ends with this picture in TensorBoard, and
    matplotlib's import and layout took a LeNet command 1.0 s (measured); Pillow, imported, 0.1 s.
    """
    from PIL import Image, ImageDraw, ImageFont

    counts = np.asarray(matrix, dtype=np.int64)  # (C, C)
    totals = counts.sum(axis=1, keepdims=True)  # (C, 1) examples per true class
    shares = counts / np.maximum(totals, 1)  # (C, C) each row sums to 1 (0 for an empty row)
    c = len(names)
    font, bold = ImageFont.load_default(size=13), ImageFont.load_default(size=14)
    cell_font = ImageFont.load_default(size=12 if c <= 10 else 9)
    cell = 46 if c <= 10 else 32  # pixels per matrix cell
    name_w = max(int(font.getlength(n)) for n in names)
    x0, y0 = 28 + name_w + 8, 40  # the matrix's top-left corner: room for the y axis and the title
    grid = c * cell
    width, height = x0 + grid + 110, y0 + grid + name_w + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    draw.text((x0 + grid // 2, 12), f"{title}: accuracy {accuracy:.3f} on {counts.sum():,} images",
              font=bold, fill="black", anchor="mt")
    for i in range(c):
        for j in range(c):
            box = (x0 + j * cell, y0 + i * cell, x0 + (j + 1) * cell - 1, y0 + (i + 1) * cell - 1)
            draw.rectangle(box, fill=_blue(shares[i, j]))
            if counts[i, j]:
                draw.text((box[0] + cell / 2, box[1] + cell / 2), str(counts[i, j]), font=cell_font,
                          fill="white" if shares[i, j] > 0.5 else "black", anchor="mm")
        draw.text((x0 - 6, y0 + i * cell + cell / 2), names[i], font=font, fill="black", anchor="rm")
        _, _, right, bottom = font.getbbox(names[i])
        _vertical_text(image, (x0 + i * cell + (cell - bottom) // 2, y0 + grid + 6 + name_w - right), names[i],
                       font)
    draw.rectangle((x0 - 1, y0 - 1, x0 + grid, y0 + grid), outline="black")
    draw.text((x0 + grid // 2, height - 8), "predicted class", font=font, fill="black", anchor="mb")
    _vertical_text(image, (4, y0 + grid // 2 - int(font.getlength("true class")) // 2), "true class", font)
    _colour_bar(image, draw, (x0 + grid + 16, y0), grid, font)
    return image


def _colour_bar(image: Any, draw: Any, corner: tuple[int, int], length: int, font: Any) -> None:
    """The scale of shares beside the matrix: 1 at the top, 0 at the bottom, ticks every 0.2."""
    x, y = corner
    for k in range(length):
        draw.line((x, y + k, x + 13, y + k), fill=_blue(1 - k / max(length - 1, 1)))
    draw.rectangle((x - 1, y - 1, x + 14, y + length), outline="black")
    for tick in range(6):
        ty = y + round((1 - tick / 5) * (length - 1))
        draw.line((x + 14, ty, x + 18, ty), fill="black")
        draw.text((x + 21, ty), f"{tick / 5:.1f}", font=font, fill="black", anchor="lm")
    label = "share of the true class"
    _vertical_text(image, (x + 50, y + length // 2 - int(font.getlength(label)) // 2), label, font)


def mistakes_figure(images: np.ndarray, true: Sequence[str], predicted: Sequence[str], probs: Sequence[float],
                    columns: int = 8, title: str = "most confident mistakes") -> Any:
    """A grid of images, (N, H, W) or (N, C, H, W) uint8 (one channel grey, three in colour), each titled
    "true -> predicted" and the predicted class's probability, like the book's predict_ch3."""
    plt = pyplot()
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.75 * rows + 0.35), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        image = images[k] if images[k].ndim == 2 else images[k].transpose(1, 2, 0)  # (H, W) or (H, W, C)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
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
    pyplot().close(fig)
