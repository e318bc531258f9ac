"""``cnnbench export RUN_DIR --format onnx|pt2|torchscript``: a trained network as a file other tools run.

The file takes a dynamic batch of (C, S, S) float images and returns logits; its input contract (side,
scaling to [0, 1], normalization, class names) is stored inside it (ONNX ``metadata_props`` key
``cnnbench``; the ExportedProgram's and TorchScript's extra file ``cnnbench.json``) and beside it
(``<file>.json``). Every export is checked: the written file runs on a batch of test images (onnxruntime for
ONNX, ``torch.export.load`` for pt2, ``torch.jit.load`` for TorchScript) and on a second batch size, and its
logits must match PyTorch's within :data:`TOLERANCE`.

pt2 is PyTorch's own format (``torch.export.save``), the successor of TorchScript, which torch 2.14 marks
deprecated: TorchScript stays while torch ships it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import DataError, ExportError
from ..fmt import add_data_root, command_parser
from .inference import LoadedRun, load_run

logger = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4  # largest allowed |logit difference| in fp32
ONNX_OPSET = 18
METADATA_KEY = "cnnbench"  # ONNX metadata_props key; TorchScript extra file is METADATA_KEY + ".json"
CHECK_IMAGES = 64  # test images the exported file is checked on
SECOND_BATCH = 3  # a second batch size, proving the batch dimension is dynamic


def _batch_dim() -> torch.export.Dim:
    """The exported input's dynamic batch dimension (dim 0 of (B, C, S, S))."""
    return torch.export.Dim("batch", min=1, max=65536)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any]) -> None:
    """``model`` to ONNX through torch.export (the dynamo exporter), batch dimension dynamic."""
    import onnx

    batch = _batch_dim()
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["images"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET,
                          external_data=False, verbose=False)
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.doc_string = f"cnnbench {metadata.get('model', '')}: see metadata_props['{METADATA_KEY}']"
    onnx.save(proto, str(path))


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any]) -> None:
    """``model`` as a torch.export ExportedProgram (``torch.export.save``), batch dimension dynamic."""
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(path), extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def run_pt2(path: Path, x: torch.Tensor) -> torch.Tensor:
    program = torch.export.load(str(path))
    with torch.no_grad():
        return program.module()(x)


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any]) -> None:
    """``model`` traced to TorchScript (traced shapes read the batch size at run time)."""
    with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated; TorchScript is still the format asked for
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(x)


WRITERS = {"onnx": (export_onnx, run_onnx), "pt2": (export_pt2, run_pt2),
           "torchscript": (export_torchscript, run_torchscript)}


@torch.no_grad()
def export_model(model: nn.Module, fmt: str, path: Path, images: torch.Tensor, metadata: dict[str, Any]) -> float:
    """Write ``model`` (eval mode, CPU, fp32) in ``fmt`` and check it on ``images`` (N, C, S, S) and on
    their first :data:`SECOND_BATCH`; returns the largest |logit difference|. Raises
    :class:`ExportError` (and removes the file) when the export fails or the difference exceeds TOLERANCE."""
    write, run = WRITERS[fmt]
    model = model.cpu().float().eval().to(memory_format=torch.contiguous_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(model, images, path, metadata)
        diff = max(float((run(path, x) - model(x)).abs().max()) for x in (images, images[:SECOND_BATCH]))
    except Exception as exc:  # exporters and runtimes raise many types; each means "not exported"
        path.unlink(missing_ok=True)
        raise ExportError(f"{fmt} export of {metadata.get('model', 'the model')} failed: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    if not diff <= TOLERANCE:  # also catches NaN
        path.unlink(missing_ok=True)
        raise ExportError(f"{fmt} export of {metadata.get('model', 'the model')} does not reproduce PyTorch: largest "
                          f"|logit difference| {diff:.3g} > {TOLERANCE:g}; the file was removed")
    return diff


def check_images(run: LoadedRun, data_root: str | None) -> tuple[torch.Tensor, str]:
    """(N, C, S, S) fp32 CPU images prepared as the run's, and what they are: the first test images,
    or seeded uniform noise when the dataset cannot be found."""
    side, channels = run.contract.side, run.contract.channels
    try:
        test = run.split("test", data_root)
    except DataError as exc:
        logger.warning("dataset not found (%s); checking the export on random images", str(exc).split(".")[0])
        gen = torch.Generator().manual_seed(0)
        return torch.rand(CHECK_IMAGES, channels, side, side, generator=gen), f"{CHECK_IMAGES} random images"
    loader = run.loader(type(test)(test.images[:CHECK_IMAGES], test.labels[:CHECK_IMAGES]), CHECK_IMAGES)
    x, _ = next(loader.batches(epoch=0))
    return x.cpu().float().contiguous(), f"the first {len(x)} test images"


def metadata_of(run: LoadedRun, fmt: str) -> dict[str, Any]:
    return {"format": fmt, "model": run.model_name, "dataset": run.dataset_name,
            **run.contract.as_dict(), "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint),
            "step": run.step, "cnnbench_version": __version__, "torch_version": torch.__version__}


def cmd_export(args: Sequence[str]) -> int:
    parser = command_parser("cnnbench export", description=(
        "Write a trained run's network as ONNX, a PyTorch ExportedProgram (pt2: torch.export.save) or "
        "TorchScript, with a dynamic batch dimension and its input contract, then check the file against PyTorch "
        f"on test images (fails above {TOLERANCE:g} largest logit difference). TorchScript is deprecated in "
        "torch 2.14 (pt2 is its successor); it stays while torch ships it."))
    parser.add_argument("run_dir", type=Path, help="a run folder (cnnbench train's output)")
    parser.add_argument("--format", required=True, choices=list(FORMATS), dest="fmt",
                        help="onnx (onnxruntime and other runtimes), pt2 (torch.export.load), torchscript "
                             "(torch.jit.load; deprecated in torch 2.14)")
    parser.add_argument("--out", type=Path, default=None,
                        help="file to write (default: RUN_DIR/export/MODEL.onnx, MODEL.pt2 or MODEL.torchscript.pt)")
    parser.add_argument("--checkpoint", default="last", help="last, best, or a checkpoint's path")
    add_data_root(parser)
    ns = parser.parse_args(args)
    if ns.fmt == "onnx":
        _require_onnx()
    run = load_run(ns.run_dir, ns.checkpoint, "cpu")
    out = ns.out or run.run_dir / "export" / f"{run.model_name}{FORMATS[ns.fmt]}"
    images, what = check_images(run, ns.data_root)
    metadata = metadata_of(run, ns.fmt)
    diff = export_model(run.model, ns.fmt, out, images, metadata)
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {sidecar.name}")
    print(f"checked on {what} and a batch of {SECOND_BATCH}: largest |logit difference| {diff:.2g} "
          f"(limit {TOLERANCE:g})")
    return 0


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the export extra ({exc.name} is missing): "
                          "pip install 'cnnbench[export]'") from None
