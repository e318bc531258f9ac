"""``cnnbench predict RUN_DIR IMAGE_OR_FOLDER...``: classify a user's own pictures with a trained run.

Any PNG, JPEG, BMP, WebP (anything Pillow reads), any size, colour or grayscale, becomes a picture like
the dataset's (:func:`to_dataset_style`): grayscale; inverted when it is dark on light (a shoe
photographed on white paper), since the MNIST family is light on dark; the background level taken off;
the object cropped and fitted into 28x28 keeping its aspect ratio, as Fashion-MNIST's own images were
made. From there the run's own preparation (resize to the model's side, normalization) takes over.

A run on an image folder or CIFAR gets none of that: its pictures are read as the training images were
(:func:`cnnbench.data.folder.decode_image`: its channels, grey or RGB, no inversion) and resized to
the run's side, then prepared by the run's own loader (its per-channel normalization).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Split
from ..data.loader import NATIVE_SIDE
from ..fmt import command_parser
from ..speed.precision import Precision
from .inference import LoadedRun, load_run

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}  # looked for in folders
OBJECT_LEVEL = 0.25  # a pixel belongs to the object above this share of the way from background to peak
BORDER = 0.03  # share of each side read as the frame that gives the background level


@dataclass
class Picture:
    """One input file and what became of it."""

    path: Path
    image: np.ndarray | None = None  # (28, 28) uint8 light object on dark, or (C, S, S) uint8 as read
    inverted: bool = False
    error: str | None = None
    top: list[tuple[str, float]] = field(default_factory=list)  # (class, probability), best first


def read_gray(path: Path) -> np.ndarray:
    """The file as (H, W) uint8 grayscale; transparent parts count as white, as viewers show them.
    Raises OSError or ValueError when Pillow cannot read it."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba)
        return np.asarray(im.convert("L"), dtype=np.uint8)


def _frame(gray: np.ndarray) -> np.ndarray:
    """The pixels of the outer frame (BORDER of each side, at least one pixel), flattened."""
    h, w = gray.shape
    by, bx = max(1, round(h * BORDER)), max(1, round(w * BORDER))
    return np.concatenate([gray[:by].ravel(), gray[-by:].ravel(), gray[:, :bx].ravel(), gray[:, -bx:].ravel()])


def to_dataset_style(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W) uint8 -> ((28, 28) uint8 light on dark, whether it was inverted)."""
    from PIL import Image

    x = gray.astype(np.float32)  # (H, W) in 0..255
    background = float(np.median(_frame(gray)))
    inverted = background > 127.5  # a light frame: dark object on light ground
    if inverted:
        x, background = 255.0 - x, 255.0 - background
    peak = float(x.max())
    if peak - background > 8:  # a blank picture keeps its frame and levels
        x = np.clip((x - background) * 255.0 / (peak - background), 0, 255)
        rows, cols = np.nonzero(x > OBJECT_LEVEL * 255.0)
        x = x[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    h, w = x.shape
    scale = NATIVE_SIDE / max(h, w)  # the longer side fills the frame, as in Fashion-MNIST
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL: (width, height)
    fitted = Image.fromarray(x.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    canvas = np.zeros((NATIVE_SIDE, NATIVE_SIDE), dtype=np.uint8)
    top, left = (NATIVE_SIDE - size[1]) // 2, (NATIVE_SIDE - size[0]) // 2
    canvas[top: top + size[1], left: left + size[0]] = np.asarray(fitted)
    return canvas, inverted


def gather_files(items: Sequence[str]) -> list[Path]:
    """Files as given, and the image files inside given folders (recursively, sorted)."""
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def load_picture(path: Path, run: LoadedRun | None = None) -> Picture:
    """Read and convert one file for ``run`` (None: the MNIST family's way); an unreadable one keeps its
    error, one line."""
    if not path.exists():
        return Picture(path, error="no such file")
    if run is not None and not run.contract.mnist_style:
        from ..data.folder import decode_image

        side = run.contract.side
        decoded = decode_image(str(path), run.contract.channels, (side, side))
        if isinstance(decoded, str):
            return Picture(path, error=f"not a readable image ({decoded})")
        return Picture(path, image=decoded[0])
    try:
        image, inverted = to_dataset_style(read_gray(path))
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's UnidentifiedImageError is an OSError
        reason = "not a readable image" if "identify" in str(exc) else f"not a readable image ({exc})"
        return Picture(path, error=reason)
    return Picture(path, image=image, inverted=inverted)


def prepared_batch(run: LoadedRun, images: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) or (N, C, S, S) uint8 images -> the network's (N, C, S, S) input, prepared by the run's own
    loader (resize to its side, its normalization, its memory layout) exactly as its test images were."""
    split = Split(images, torch.zeros(len(images), dtype=torch.long))
    x, _ = next(run.loader(split, batch_size=len(images)).batches(epoch=0))
    return x


@torch.no_grad()
def classify(run: LoadedRun, pictures: list[Picture], topk: int) -> None:
    """Fill in each readable picture's ``top``: one batch through the run's own input preparation."""
    good = [p for p in pictures if p.image is not None]
    if not good:
        return
    x = prepared_batch(run, torch.from_numpy(np.stack([p.image for p in good])))  # (N, C, S, S)
    with Precision.create("fp32", run.device).autocast():
        probs = run.model(x).float().softmax(dim=1).cpu()  # (N, C)
    k = min(topk, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    names = run.contract.classes
    for p, vs, ix in zip(good, values.tolist(), indices.tolist(), strict=True):
        p.top = [(names[i], v) for v, i in zip(vs, ix, strict=True)]


def line(p: Picture) -> str:
    if p.error:
        return f"{p.path}: error: {p.error}"
    guesses = ", ".join(f"{name} {prob:.3f}" for name, prob in p.top)
    return f"{p.path}: {guesses}" + (" (inverted: it was dark on light)" if p.inverted else "")


def as_json(p: Picture) -> dict[str, Any]:
    if p.error:
        return {"file": str(p.path), "error": p.error}
    return {"file": str(p.path), "inverted": p.inverted,
            "predictions": [{"class": name, "probability": prob} for name, prob in p.top]}


def cmd_predict(args: Sequence[str]) -> int:
    """``cnnbench predict``: 0 when every file was classified, 1 when some were not."""
    parser = command_parser("cnnbench predict", description=(
        "Classify your own pictures (PNG, JPEG, BMP, WebP; any size, colour or grayscale) with a trained run: "
        "one line per file with the most likely classes and their probabilities."))
    parser.add_argument("run_dir", type=Path, help="a run folder (cnnbench train's output)")
    parser.add_argument("images", nargs="+", help="image files, or folders of them")
    parser.add_argument("--topk", type=int, default=3, help="classes shown per file")
    parser.add_argument("--checkpoint", default="last", help="last, best, or a checkpoint's path")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of lines")
    ns = parser.parse_args(args)
    if ns.topk < 1:
        parser.error("--topk must be at least 1")
    run = load_run(ns.run_dir, ns.checkpoint, ns.device)
    pictures = [load_picture(path, run) for path in gather_files(ns.images)]
    if not pictures:
        parser.error("no image files found in the given folders")
    classify(run, pictures, ns.topk)
    if ns.json:
        print(json.dumps([as_json(p) for p in pictures], indent=2))
    else:
        for p in pictures:
            print(line(p), file=sys.stderr if p.error else sys.stdout)
    return 1 if any(p.error for p in pictures) else 0
