"""Atomic checkpoints that load with ``torch.load(weights_only=True)``, and refusing bad ones clearly."""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "optimizer", "epoch", "step", "config", "rng")


def rng_state() -> dict[str, Any]:
    """Every random state a run draws from, as tensors and plain data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_state_from_plain(plain: dict) -> tuple:
    return (plain["version"], tuple(int(v) for v in plain["internal"].tolist()), plain["gauss"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, flush, fsync, rename over the old one.

    A kill at any moment leaves either the previous checkpoint or the new one, never a torn file; the
    temporary name starts with a dot and ends in ``.tmp`` so nothing mistakes it for a checkpoint.
    """
    state = {"format_version": FORMAT_VERSION, **state}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a checkpoint; anything unusable raises :class:`CheckpointError` naming the file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a cnnbench checkpoint (holds a {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a cnnbench checkpoint: missing {', '.join(missing)}")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, this cnnbench reads {FORMAT_VERSION}"
        )
    return state
