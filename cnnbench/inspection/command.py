"""``cnnbench inspect RUN [IMAGE ...]``: what a trained network sees, written as PNGs, TensorBoard images and
one self-contained HTML page.

The run is loaded as ``cnnbench predict`` loads it (:func:`cnnbench.evaluation.inference.load_run`: its
config, the checkpoint chosen, the EMA weights when it kept them) and every picture goes through the run's
own preparation (:func:`cnnbench.evaluation.predict.load_picture` and ``prepared_batch``). Without files it
shows test images: by index or class name (``--test 17 Coat``), else the first test image of each class.

Everything that can be wrong with the input (the run, a file, a class name, a network without a
convolution) is found before the output folder is made: one sentence, nothing written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CnnbenchError
from ..evaluation.inference import LoadedRun, load_run
from ..evaluation.predict import gather_files, load_picture, prepared_batch
from ..fmt import add_data_root, command_parser
from ..runfolder.log import write_json_atomic
from . import pictures as pic
from .page import Cell, Row, Table, png_bytes, write_page
from .probe import InspectError, Probe, cam_layer, grad_cam, probe

logger = logging.getLogger(__name__)

INSPECT_DIR = "inspect"  # default output folder inside the run folder
DEFAULT_COUNT = 8  # test images shown when none are named: the first of each class in turn
TOP_K = 3  # classes listed per image in inspect.json


@dataclass
class Shown:
    """One image to look at, before the run's own preparation."""

    label: str  # "test #17" or the file's name
    source: str  # "test:17" or the file's path
    image: torch.Tensor  # (28, 28) or (C, H, W) uint8, as the run's loader takes it
    true: str | None = None  # the class, for test images


@dataclass
class Look:
    """One run's view of the images."""

    run: LoadedRun
    x: torch.Tensor  # (N, C, S, S) the prepared inputs, on the run's device
    probe: Probe
    probs: torch.Tensor  # (N, classes)
    layer: str  # the Grad-CAM layer's dotted name
    cams: dict[str, torch.Tensor]  # row label -> (N, S, S) Grad-CAM maps
    cam_captions: dict[str, list[str]]  # row label -> the class each image's map is for

    @property
    def name(self) -> str:
        return f"{self.run.run_dir.name} ({self.run.model_name})"


def class_index(run: LoadedRun, name: str) -> int:
    """A class of the run by name (any case); one sentence listing them when it has no such class."""
    names = run.contract.classes
    for i, candidate in enumerate(names):
        if candidate.lower() == name.lower():
            return i
    raise InspectError(f"the run has no class {name!r}; its classes: {', '.join(names)}")


def test_images(run: LoadedRun, items: Sequence[str], data_root: str | None, count: int) -> list[Shown]:
    """Test images by index or class name (each name takes the next image of that class not yet taken);
    without items, the first ``count`` taking one class after another."""
    split = run.split("test", data_root)
    labels = split.labels.tolist()
    names = run.contract.classes
    if not items:
        items = [names[k % len(names)] for k in range(count)]
    taken: list[int] = []
    for item in items:
        if item.lstrip("-").isdigit():
            index = int(item)
            if not 0 <= index < len(labels):
                raise InspectError(f"test image {index} does not exist: the test split has {len(labels):,} images")
        else:
            c = class_index(run, item)
            index = next((i for i, y in enumerate(labels) if y == c and i not in taken), -1)
            if index < 0:
                raise InspectError(f"the test split has no more images of class {names[c]!r}")
        taken.append(index)
    return [Shown(f"test #{i}", f"test:{i}", split.images[i], names[labels[i]]) for i in taken]


def file_images(run: LoadedRun, items: Sequence[str]) -> list[Shown]:
    """The given files (and images in given folders), read as ``cnnbench predict`` reads them."""
    shown = []
    files = gather_files(items)
    if not files:
        raise InspectError(f"no image files in {', '.join(items)}")
    for path in files:
        picture = load_picture(path, run)
        if picture.image is None:
            raise InspectError(f"{path}: {picture.error}")
        shown.append(Shown(path.name, str(path), torch.from_numpy(picture.image)))
    return shown


def prepared(run: LoadedRun, shown: Sequence[Shown]) -> torch.Tensor:
    """(N, C, S, S): each image prepared by the run's own loader (one by one: files and test images may
    differ in size before the resize)."""
    return torch.cat([prepared_batch(run, s.image[None]) for s in shown])


def look(run: LoadedRun, shown: Sequence[Shown], chosen: str | None, layer: str | None) -> Look:
    """Run the images through one run: stages, probabilities, Grad-CAM for the predicted and the chosen class."""
    x = prepared(run, shown)
    seen = probe(run.model, x)
    target = cam_layer(run.model, seen.shapes, layer)
    probs = seen.logits.softmax(dim=1)  # (N, classes)
    predicted = probs.argmax(dim=1).tolist()
    names = run.contract.classes
    cams = {"Grad-CAM: predicted": grad_cam(run.model, target, x, predicted)}
    captions = {"Grad-CAM: predicted": [names[c] for c in predicted]}
    if chosen is not None:
        c = class_index(run, chosen)
        cams[f"Grad-CAM: {names[c]}"] = grad_cam(run.model, target, x, [c] * len(shown))
        captions[f"Grad-CAM: {names[c]}"] = [names[c]] * len(shown)
    return Look(run, x, seen, probs, target, cams, captions)


def predictions(look_: Look, i: int, k: int = TOP_K) -> list[tuple[str, float]]:
    values, indices = look_.probs[i].topk(min(k, look_.probs.shape[1]))
    return [(look_.run.contract.classes[c], float(v)) for v, c in zip(values.tolist(), indices.tolist(), strict=True)]


def column_titles(look_: Look, shown: Sequence[Shown]) -> list[list[str]]:
    titles = []
    for i, s in enumerate(shown):
        name, p = predictions(look_, i, 1)[0]
        lines = [s.label[:22]] + ([f"true {s.true}"] if s.true else []) + [f"pred {name} {p:.2f}"]
        titles.append(lines)
    return titles


@dataclass
class Drawn:
    """A run's pictures: the rows (label, shape note, one picture per image), the kernels, the overlays."""

    rows: list[tuple[str, str, list[Any]]]
    kernels: Any | None
    kernels_note: str
    response: list[Any] | None  # the first conv's response per image, for grey inputs
    response_row: bool  # whether it needs a row of its own (the first conv is not a stage already)
    cam_rows: list[tuple[str, list[Any], list[str]]]  # label, overlays, caption per image


def draw(look_: Look) -> Drawn:
    """Every picture of one run, as Pillow images."""
    model, seen = look_.run.model, look_.probe
    inputs = [pic.input_picture(x) for x in look_.x.detach().cpu()]
    rows: list[tuple[str, str, list[Any]]] = [("input", f"{tuple(look_.x.shape[1:])}",
                                               [pic.enlarged(pic.picture(a)) for a in inputs])]
    for stage in seen.stages:
        c = stage.output.shape[1]
        shown = len(pic.chosen_channels(stage.output))
        low, high = float(stage.output.min()), float(stage.output.max())  # colours are scaled per channel: say it
        note = (f"{tuple(stage.output.shape[1:])}" + (f", {shown} most active of {c} channels" if shown < c else "")
                + f", values {low:.3g} to {high:.3g}")
        rows.append((stage.name, note, pic.stage_pictures(stage.output)))
    kernels, note, response, own_row = None, "", None, False
    if seen.first_conv is not None:
        conv = dict(model.named_modules())[seen.first_conv]
        k = conv.weight.shape
        kernels = pic.kernels_picture(conv.weight)
        note = (f"{k[0]} kernels {k[2]}x{k[3]} (module {seen.first_conv}) "
                + ("(RGB)" if k[1] == 3 else "(red positive, blue negative, white 0)"))
        stage_paths = [s.path for s in seen.stages]
        if look_.x.shape[1] == 1 and seen.first_response is not None:
            own_row = seen.first_conv not in stage_paths
            response = (pic.stage_pictures(seen.first_response) if own_row
                        else rows[1 + stage_paths.index(seen.first_conv)][2])
    cam_rows = []
    for label, maps in look_.cams.items():
        overlays = [pic.enlarged(pic.overlay(inputs[i], maps[i])) for i in range(len(inputs))]
        captions = [c if float(maps[i].max()) > 0 else f"{c} (no positive evidence: the map is 0)"
                    for i, c in enumerate(look_.cam_captions[label])]
        cam_rows.append((label, overlays, captions))
    return Drawn(rows, kernels, note, response, own_row, cam_rows)


def write_pictures(look_: Look, drawn: Drawn, shown: Sequence[Shown], folder: Path) -> tuple[dict[str, Any],
                                                                                              list[Path]]:
    """overview.png, filters.png, gradcam.png and stages/NN_NAME.png in ``folder``; returns the Pillow images
    by name (for TensorBoard and the comparison) and the files written."""
    titles = column_titles(look_, shown)
    title = f"{look_.name}: {look_.run.checkpoint.name}, step {look_.run.step}"
    all_rows = [(f"{label} {note}" if label == "input" else label, pics) for label, note, pics in drawn.rows]
    if drawn.response_row:
        all_rows.append(("first conv response", drawn.response))
    all_rows += [(f"{label} ({look_.layer})", pics) for label, pics, _ in drawn.cam_rows]
    images = {"overview": pic.table_picture(title, titles, all_rows)}
    cam_table = [("input", drawn.rows[0][2])] + [(label, pics) for label, pics, _ in drawn.cam_rows]
    images["gradcam"] = pic.table_picture(f"{title}: Grad-CAM at {look_.layer}", titles, cam_table,
                                          cell=2 * pic.CELL)
    if drawn.kernels is not None:
        kernels = pic.with_caption(pic.fit(drawn.kernels, 4 * pic.CELL), [f"first conv: {drawn.kernels_note}"])
        if drawn.response:
            below = pic.table_picture("its response to each image", titles,
                                      [("input", drawn.rows[0][2]), ("response", drawn.response)],
                                      cell=4 * pic.CELL // 3)
            kernels = pic.stacked([kernels, below])
        images["filters"] = kernels
    (folder / "stages").mkdir(parents=True, exist_ok=True)
    files = []
    for (label, note, pics), stage in zip(drawn.rows[1:], look_.probe.stages, strict=True):
        row = pic.table_picture(f"{title}: {label} {note}", titles, [(label, pics)],
                                cell=max(2 * pic.CELL, *pics[0].size))
        files.append(folder / "stages" / f"{stage.file_stem}.png")
        row.save(files[-1])
    for name, image in images.items():
        files.append(folder / f"{name}.png")
        image.save(files[-1])
    return images, files


def page_table(look_: Look, drawn: Drawn, shown: Sequence[Shown]) -> Table:
    """One run's table of the HTML page."""
    titles = column_titles(look_, shown)
    rows = []
    for label, note, pics in drawn.rows:
        captions = [f"{label} {note}: {s.label}" for s in shown]
        rows.append(Row(label, note, [Cell(png_bytes(p), c) for p, c in zip(pics, captions, strict=True)]))
    if drawn.response_row:
        rows.append(Row("first conv response", look_.probe.first_conv or "",
                        [Cell(png_bytes(p), f"first conv response: {s.label}")
                         for p, s in zip(drawn.response, shown, strict=True)]))
    if drawn.kernels is not None:
        rows.append(Row("first conv kernels", drawn.kernels_note,
                        [Cell(png_bytes(drawn.kernels), f"first conv: {drawn.kernels_note}")], across=True))
    for label, pics, classes in drawn.cam_rows:
        rows.append(Row(label, f"at {look_.layer}", [Cell(png_bytes(p), f"{label}: {cls}, {s.label}")
                                                      for p, cls, s in zip(pics, classes, shown, strict=True)]))
    acc = look_.run.summary.get("test/acc")
    lines = [f"{look_.run.checkpoint.name}, step {look_.run.step}"
             + (f", test accuracy {acc:.3f}" if isinstance(acc, float) else ""),
             f"Grad-CAM layer: {look_.layer}"]
    return Table(look_.name, lines, titles, rows)


def to_tensorboard(run: LoadedRun, images: dict[str, Any]) -> None:
    """The pictures as images of the run's TensorBoard (tags inspect/NAME), at the checkpoint's step."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(run.run_dir)) as writer:
        for name, image in images.items():
            writer.add_image(f"inspect/{name}", np.asarray(image), run.step, dataformats="HWC")


def record(looks: Sequence[Look], shown: Sequence[Shown], files: Sequence[Path]) -> dict[str, Any]:
    """inspect.json: what was shown, what each run predicted, the stages and the Grad-CAM layer."""
    return {
        "runs": [{"run_dir": str(lk.run.run_dir), "model": lk.run.model_name,
                  "checkpoint": str(lk.run.checkpoint), "step": lk.run.step, "gradcam_layer": lk.layer,
                  "stages": [{"name": s.name, "module": s.path, "shape": list(s.output.shape[1:]),
                              "min": float(s.output.min()), "mean": float(s.output.mean()),
                              "max": float(s.output.max())} for s in lk.probe.stages],
                  "first_conv": lk.probe.first_conv,
                  "images": [{"image": s.source, "true": s.true,
                              "predictions": [{"class": n, "probability": p} for n, p in predictions(lk, i)]}
                             for i, s in enumerate(shown)]}
                 for lk in looks],
        "files": [str(f) for f in files],
    }


def remove_previous(out: Path) -> None:
    """Delete the files an earlier inspection listed in ``out/inspect.json`` (and folders they leave empty), so
    that a new one leaves no stale comparison or stage picture behind; nothing else in ``out`` is touched."""
    try:
        listed = [Path(f) for f in json.loads((out / "inspect.json").read_text()).get("files", [])]
    except (OSError, ValueError, AttributeError):  # no earlier inspection here, or not a record of one
        return
    root = out.resolve()
    for path in listed:
        if path.resolve().is_relative_to(root) and path.is_file():
            path.unlink()
    for folder in sorted({p.parent for p in listed}, key=lambda p: -len(p.parts)):  # stages/ before compare_X/
        if folder.resolve() != root and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            if folder.parent.resolve() != root and not any(folder.parent.iterdir()):
                folder.parent.rmdir()


def inspect_runs(run_dir: Path, items: Sequence[str], tests: Sequence[str], chosen: str | None = None,
                 compare: Path | None = None, checkpoint: str = "last", device: str = "auto",
                 data_root: str | None = None, layer: str | None = None, out: Path | None = None,
                 count: int = DEFAULT_COUNT, tensorboard: bool = True) -> tuple[list[Look], list[Path]]:
    """Everything ``cnnbench inspect`` does; returns the looks and the files written."""
    runs = [load_run(run_dir, checkpoint, device)]
    if compare is not None:
        runs.append(load_run(compare, checkpoint, device))
        a, b = runs[0].contract, runs[1].contract
        if (a.channels, a.mnist_style) != (b.channels, b.mnist_style):
            raise InspectError(f"{compare} takes other pictures ({b.channels} channel(s)) than {run_dir} "
                               f"({a.channels}): the same images cannot go through both")
    if chosen is not None:
        for run in runs:
            class_index(run, chosen)
    shown = file_images(runs[0], items) if items else []
    if tests or not items:
        shown += test_images(runs[0], tests, data_root, count)
    looks = [look(run, shown, chosen, layer) for run in runs]  # every check passed: now draw and write
    out = out or run_dir / INSPECT_DIR
    remove_previous(out)
    folders = [out] + [out / f"compare_{lk.run.run_dir.name}" for lk in looks[1:]]
    written, drawings, pictures = [], [], []
    for lk, folder in zip(looks, folders, strict=True):
        folder.mkdir(parents=True, exist_ok=True)
        drawn = draw(lk)
        drawings.append(drawn)
        images, files = write_pictures(lk, drawn, shown, folder)
        pictures.append(images)
        written += files
    if len(looks) > 1:
        pair = pic.side_by_side([p["overview"] for p in pictures])  # each overview carries its run's title
        pair.save(out / "side_by_side.png")
        pictures[0]["side_by_side"] = pair
        written.append(out / "side_by_side.png")
    names = " vs ".join(lk.name for lk in looks)
    notes = ["Layers as rows, images as columns; click a picture to enlarge it (Escape or a click closes it). "
             "Feature maps are coloured per channel on one scale across the images (viridis: dark low, yellow "
             "high); Grad-CAM is red where the class's evidence is strongest."]
    written.append(write_page(out / "inspect.html", f"cnnbench inspect: {names}",
                              [page_table(lk, d, shown) for lk, d in zip(looks, drawings, strict=True)], notes))
    written.append(out / "inspect.json")
    write_json_atomic(out / "inspect.json", record(looks, shown, written))
    if tensorboard:
        for lk, images in zip(looks, pictures, strict=True):
            to_tensorboard(lk.run, images)
    return looks, written


def cmd_inspect(args: Sequence[str]) -> int:
    """``cnnbench inspect``: 0 when everything was written; bad input is one sentence (exit 2)."""
    parser = command_parser("cnnbench inspect", description=(
        "Look inside a trained run: the feature maps after each stage (as cnnbench summary names them), the "
        "first convolution's kernels and their response, and Grad-CAM for the predicted class (and --class), "
        "for your pictures or test images. Writes PNGs, inspect.html (one self-contained page) and inspect.json "
        "into RUN/inspect (or --out) and adds the pictures to the run's TensorBoard."))
    parser.add_argument("run_dir", type=Path, help="a run folder (cnnbench train's output)")
    parser.add_argument("images", nargs="*", help="image files or folders of them (none: test images)")
    parser.add_argument("--test", nargs="+", default=[], metavar="INDEX|CLASS",
                        help="test images by index, or by class name (the next image of that class)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help="test images shown when none are named: the first of each class in turn")
    parser.add_argument("--class", dest="cam_class", default=None, metavar="NAME",
                        help="also show Grad-CAM for this class (its name, any case)")
    parser.add_argument("--compare", type=Path, default=None, metavar="RUN2",
                        help="a second run: the same images through both, side by side")
    parser.add_argument("--layer", default=None, help="Grad-CAM's layer by module name (default: the last block "
                        "with a convolution whose output is a map)")
    parser.add_argument("--checkpoint", default="last", help="last, best, or a checkpoint's path")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/inspect)")
    add_data_root(parser)
    parser.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard images")
    ns = parser.parse_intermixed_args(args)  # options before, between or after the images
    if ns.count < 1:
        parser.error("--count must be at least 1")
    try:
        import captum  # noqa: F401
    except ImportError:
        raise CnnbenchError("cnnbench inspect needs captum for Grad-CAM: pip install 'cnnbench[inspect]'") from None
    looks, written = inspect_runs(ns.run_dir, ns.images, ns.test, ns.cam_class, ns.compare, ns.checkpoint,
                                  ns.device, ns.data_root, ns.layer, ns.out, ns.count, not ns.no_tensorboard)
    shown = json.loads(written[-1].read_text())["runs"]
    for run in shown:
        print(f"{run['run_dir']} ({run['model']}, {Path(run['checkpoint']).name}); Grad-CAM at {run['gradcam_layer']}")
        for image in run["images"]:
            guesses = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in image["predictions"])
            truth = f" (true {image['true']})" if image["true"] else ""
            print(f"  {image['image']}{truth}: {guesses}")
    page = written[-2]
    print(f"wrote {page} (open it in a browser) and {len(written) - 1} more files in {page.parent}"
          + ("" if ns.no_tensorboard else "; the pictures are in TensorBoard under inspect/"))
    return 0
