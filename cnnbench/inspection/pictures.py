"""The pictures of an inspection, drawn with Pillow and matplotlib's colour maps (no figure layout: a
LeNet inspection stays within a few seconds).

Every function returns an RGB ``PIL.Image``. Maps are scaled to [0, 1] before colouring: feature maps per
channel over all images shown (so one channel compares across images), kernels on one symmetric scale
(white is 0), Grad-CAM per image (its largest value is full red).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

MAX_CHANNELS = 32  # feature maps drawn per stage: the most active ones when a stage has more
MIN_MAP = 48  # pixels: small maps (a 3x3 ResNet stage) are enlarged to at least this side, without blurring
MAX_MAP = 56  # pixels: large maps (VGG's 224x224) are shrunk to at most this side
GAP = 2  # pixels between maps in a grid
CAM_ALPHA = 0.5  # weight of the heat map over the picture
KERNEL_SIDE = 80  # pixels: a drawn kernel (5x5, 7x7, 11x11) is enlarged to at least this side
CELL = 150  # pixels: the side of one cell of the overview


def _font(size: int = 12) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def colour(values: np.ndarray, cmap: str) -> np.ndarray:
    """(..., H, W) values in [0, 1] -> (..., H, W, 3) uint8 through a matplotlib colour map."""
    from matplotlib import colormaps

    return colormaps[cmap](np.clip(values, 0.0, 1.0), bytes=True)[..., :3]


def scaled_per_channel(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> the same in [0, 1], each channel on its own range over all N images."""
    low = maps.amin(dim=(0, 2, 3), keepdim=True)
    high = maps.amax(dim=(0, 2, 3), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


def chosen_channels(maps: torch.Tensor, limit: int = MAX_CHANNELS) -> list[int]:
    """The channels drawn: all up to ``limit``, else the ``limit`` with the largest mean |activation| over the
    images (in channel order, so a channel keeps its place across images and stages of one run)."""
    c = maps.shape[1]
    if c <= limit:
        return list(range(c))
    activity = maps.abs().mean(dim=(0, 2, 3))  # (C,)
    return sorted(activity.topk(limit).indices.tolist())


def _resized(image: Any, side: int, smooth: bool = False) -> Any:
    """A square-ish image scaled so that its longer side is ``side``: nearest neighbour keeps pixels visible."""
    from PIL import Image

    w, h = image.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.LANCZOS if smooth and scale < 1 else Image.Resampling.NEAREST)


def fit(image: Any, side: int) -> Any:
    """``image`` within a ``side``-pixel square: shrunk smoothly, or enlarged by a whole factor (sharp pixels)."""
    from PIL import Image

    longest = max(image.size)
    if longest > side:
        return _resized(image, side, smooth=True)
    factor = side // longest
    return image.resize((image.size[0] * factor, image.size[1] * factor), Image.Resampling.NEAREST)


def map_side(h: int) -> int:
    """The drawn side of one (h, w) map: at least MIN_MAP, at most MAX_MAP, a whole multiple when enlarged."""
    if h >= MAX_MAP:
        return MAX_MAP
    return h * max(1, math.ceil(MIN_MAP / h))


def tile(images: Sequence[Any], columns: int, background: str = "white", gap: int = GAP) -> Any:
    """Equal-sized images in a grid, ``columns`` wide, ``gap`` pixels apart."""
    from PIL import Image

    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    canvas = Image.new("RGB", (columns * (w + gap) - gap, rows * (h + gap) - gap), background)
    for k, im in enumerate(images):
        canvas.paste(im, ((k % columns) * (w + gap), (k // columns) * (h + gap)))
    return canvas


def channel_grid(maps: np.ndarray, cmap: str = "viridis") -> Any:
    """(C, H, W) maps in [0, 1] -> one picture: the channels in a near-square grid, each coloured."""
    from PIL import Image

    side = map_side(maps.shape[1])
    coloured = colour(maps, cmap)  # (C, H, W, 3)
    cells = [_resized(Image.fromarray(c), side, smooth=True) for c in coloured]  # (side, side) each
    return tile(cells, math.ceil(math.sqrt(len(cells))))


def stage_pictures(output: torch.Tensor) -> list[Any]:
    """One picture per image of a stage's (N, C, H, W) output: its chosen channels, scaled per channel."""
    maps = output[:, chosen_channels(output)]
    scaled = scaled_per_channel(maps).numpy()
    return [channel_grid(m) for m in scaled]


def picture(array: np.ndarray) -> Any:
    """(H, W, 3) or (H, W) uint8 -> a Pillow RGB image."""
    from PIL import Image

    return Image.fromarray(array).convert("RGB")


def stacked(images: Sequence[Any]) -> Any:
    """Pictures one under the other, centred, 12 pixels apart."""
    from PIL import Image

    width = max(im.size[0] for im in images)
    canvas = Image.new("RGB", (width, sum(im.size[1] for im in images) + 12 * (len(images) - 1)), "white")
    y = 0
    for im in images:
        canvas.paste(im, ((width - im.size[0]) // 2, y))
        y += im.size[1] + 12
    return canvas


def input_picture(x: torch.Tensor) -> np.ndarray:
    """One prepared network input (C, S, S) as the network sees it, stretched to [0, 1] for display:
    (S, S, 3) uint8 (grey repeated for one channel)."""
    v = x.float()
    v = (v - v.min()) / (v.max() - v.min()).clamp_min(1e-12)
    rgb = v.expand(3, -1, -1) if v.shape[0] == 1 else v[:3]
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def overlay(picture: np.ndarray, cam: torch.Tensor) -> Any:
    """A Grad-CAM map (S, S), >= 0, over its picture (S, S, 3) uint8: the map scaled to its own maximum,
    coloured by "jet" (blue cold, red hot) and blended."""
    from PIL import Image

    peak = float(cam.max())
    heat = colour((cam / peak).numpy() if peak > 0 else np.zeros(cam.shape), "jet").astype(np.float32)
    blended = (1 - CAM_ALPHA) * picture.astype(np.float32) + CAM_ALPHA * heat
    return Image.fromarray(blended.round().astype(np.uint8))


def enlarged(image: Any, side: int = 2 * CELL) -> Any:
    """A small picture (a 28x28 input) enlarged with visible pixels, so its overlay is readable."""
    return _resized(image, side) if max(image.size) < side else image


def kernels_picture(weight: torch.Tensor) -> Any:
    """The first convolution's kernels (C_out, C_in, k, k): for one or several input channels their mean over
    the inputs on a red-white-blue scale symmetric around 0 (red positive); for three (RGB) each kernel as a
    colour picture stretched to its own range."""
    from PIL import Image

    w = weight.detach().float().cpu()
    if w.shape[1] == 3:
        low = w.amin(dim=(1, 2, 3), keepdim=True)
        high = w.amax(dim=(1, 2, 3), keepdim=True)
        rgb = ((w - low) / (high - low).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()  # (C_out, k, k, 3)
        images = (rgb * 255).round().astype(np.uint8)
    else:
        mean = w.mean(dim=1)  # (C_out, k, k)
        bound = float(mean.abs().max()) or 1.0
        images = colour((mean / bound + 1).numpy() / 2, "RdBu_r")  # 0 -> the middle: white
    side = max(KERNEL_SIDE, images.shape[1])
    cells = [_resized(Image.fromarray(k), side) for k in images[:MAX_CHANNELS * 2]]
    return tile(cells, min(len(cells), 16), background="#888888", gap=4)  # grey gaps: white is a kernel's 0


def with_caption(image: Any, lines: Sequence[str], width: int | None = None, colour_: str = "black") -> Any:
    """``image`` with text lines above it, centred."""
    from PIL import Image, ImageDraw

    font = _font(12)
    line_h = 15
    width = max(width or 0, image.size[0], *(int(font.getlength(t)) + 8 for t in lines))
    canvas = Image.new("RGB", (width, image.size[1] + line_h * len(lines) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(lines):
        draw.text((width // 2, 2 + k * line_h), text, font=font, fill=colour_, anchor="ma")
    canvas.paste(image, ((width - image.size[0]) // 2, line_h * len(lines) + 4))
    return canvas


def table_picture(title: str, column_titles: Sequence[Sequence[str]], rows: Sequence[tuple[str, Sequence[Any]]],
                  cell: int = CELL) -> Any:
    """The overview: one row per layer (its label on the left), one column per image (its title lines on
    top), each picture fitted into a ``cell``-pixel square."""
    from PIL import Image, ImageDraw

    font, bold = _font(12), _font(14)
    label_w = max(int(font.getlength(label)) for label, _ in rows) + 16
    head_h = 24 + 15 * max(len(t) for t in column_titles)
    n = len(column_titles)
    canvas = Image.new("RGB", (label_w + n * (cell + 8), head_h + len(rows) * (cell + 8)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, font=bold, fill="black")
    for j, lines in enumerate(column_titles):
        for k, text in enumerate(lines):
            draw.text((label_w + j * (cell + 8) + cell // 2, 24 + 15 * k), text, font=font, fill="black", anchor="ma")
    for i, (label, pictures) in enumerate(rows):
        y = head_h + i * (cell + 8)
        draw.text((6, y + cell // 2), label, font=font, fill="black", anchor="lm")
        for j, picture in enumerate(pictures):
            if picture is None:
                continue
            fitted = fit(picture, cell)
            x0 = label_w + j * (cell + 8) + (cell - fitted.size[0]) // 2
            canvas.paste(fitted, (x0, y + (cell - fitted.size[1]) // 2))
    return canvas


def side_by_side(pictures: Sequence[Any], titles: Sequence[str] | None = None) -> Any:
    """Pictures next to each other, each under its title if given (the two runs of a comparison)."""
    from PIL import Image

    captioned = list(pictures) if titles is None else [with_caption(p, [t]) for p, t in zip(pictures, titles,
                                                                                           strict=True)]
    width = sum(p.size[0] for p in captioned) + 24 * (len(captioned) - 1)
    canvas = Image.new("RGB", (width, max(p.size[1] for p in captioned)), "white")
    x = 0
    for p in captioned:
        canvas.paste(p, (x, 0))
        x += p.size[0] + 24
    return canvas
