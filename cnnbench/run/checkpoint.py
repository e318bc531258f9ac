"""Checkpoints: what a run must carry to resume exactly, written atomically, refused clearly when bad.

``checkpoint_state`` gathers the run's progress (:class:`RunState`) with every other state (model,
optimizer, schedule, gradient scaler, RNGs, config) as plain data that loads with
``torch.load(weights_only=True)``; ``save_checkpoint`` writes it atomically; ``resolve_resume`` finds
the checkpoint to resume from and ``restore`` loads it into a built run.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import OmegaConf

from .. import __version__
from ..errors import CheckpointError
from ..models.configured import network_record
from ..runfolder.disk import atomic_write, low_space_warning
from ..runfolder.names import CHECKPOINT
from .state import RunState

if TYPE_CHECKING:
    from .build import Run

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model", "optimizer", "epoch", "step", "config", "rng")


def checkpoint_state(run: Run) -> dict[str, Any]:
    """Everything :func:`restore` needs, as plain data."""
    return {
        "model": run.raw_model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.precision.scaler.state_dict() if run.precision.scaler is not None else None,
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "epoch": run.state.epoch,
        "step": run.state.step,
        "run_state": run.state.as_dict(),
        "rng": rng_state(),
        "config": OmegaConf.to_container(run.cfg, resolve=True),
        "network": network_record(run.cfg, run.raw_model),  # resume compares it (run.resume.check_network)
        "cnnbench_version": __version__,
    }


def resolve_resume(resume: str | None, run_dir: Path, announce: bool = True) -> Path | None:
    """The checkpoint to resume from (``trainer.resume``): None, this run folder's last.pt (auto), or a given
    path. ``announce``: say when auto finds none (the run says it; the check before launch does not say it again)."""
    if not resume:
        return None
    if str(resume) == "auto":
        path = run_dir / CHECKPOINT
        if not path.exists():
            if announce:
                logger.info("trainer.resume=auto: no %s in %s, starting from scratch", CHECKPOINT, run_dir)
            return None
        return path
    return Path(str(resume)).expanduser()


def check_model_name(state: dict[str, Any], path: Path, name: str) -> None:
    """Refuse a checkpoint written for another network than ``name``, naming both."""
    saved = (state["config"].get("model") or {}).get("name")
    if saved != name:
        raise CheckpointError(f"checkpoint {path} holds a {saved!r} network, but the run trains {name!r}")


def restore(run: Run, path: Path) -> None:
    """Load model, optimizer, scheduler, scaler, progress and RNG states from ``path`` into ``run``."""
    state = load_checkpoint(path)
    check_model_name(state, path, str(run.cfg.model.name))
    try:
        run.raw_model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model or optimizer: "
                              f"{str(exc).splitlines()[0]}") from exc
    if run.scheduler is not None and state.get("scheduler"):
        run.scheduler.load_state_dict(state["scheduler"])
    if run.precision.scaler is not None and state.get("scaler"):
        run.precision.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    run.state = RunState.from_dict(state["run_state"])
    set_rng_state(state["rng"])
    logger.info("resumed from %s at epoch %d, step %d", path, run.state.epoch, run.state.step)


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
    temporary name starts with a dot and ends in ``.tmp`` so nothing mistakes it for a checkpoint. A
    failed write (a full disk) raises :class:`RunFileWriteError` naming ``path``; the previous file stays.
    """
    state = {"format_version": FORMAT_VERSION, **state}
    if path.exists():
        low_space_warning(path.parent, path.stat().st_size)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)
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
