"""Run files on a disk that may fill up.

A failed write of any run file (checkpoint, summary.json, metrics.jsonl, TensorBoard events) becomes one
:class:`~cnnbench.errors.RunFileWriteError` naming the file and the OS error (``writing``); the run then
ends ``failed`` with ``resumable_from_epoch`` and the exact command that resumes it once there is space
(``resume_fields``). ``low_space_warning`` warns, once per folder, when the disk holds less than a few
checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import RunFileWriteError
from ..fmt import human
from .names import CHECKPOINT

logger = logging.getLogger(__name__)

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # full disk, quota, file size, read-only
LOW_SPACE_CHECKPOINTS = 3  # warn below this many checkpoints of free space (an atomic save needs one spare)
_WARNED: set[str] = set()  # folders already warned about, in this process


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: itself, or the one torch's zip writer wrapped in a RuntimeError
    ("[enforce fail at inline_container.cc] unexpected pos ...", the OSError as its context)."""
    for _ in range(8):  # a short chain; never loop on a cycle
        if exc is None or isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write inside the block into one RunFileWriteError naming ``path``."""
    try:
        yield
    except RunFileWriteError:
        raise
    except (OSError, RuntimeError) as exc:
        os_error = os_error_in(exc)
        if os_error is None:
            raise
        raise RunFileWriteError(path, os_error) from exc


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (``.NAME.PID.tmp``: hidden, never mistaken for the real file, one per
    process) for a writer that makes a whole file (a compiler, a serializer); renamed over ``path`` when
    the block ends without an error, so readers see the old file or the new one, never a torn one; removed
    in every case."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """A file to write ``path``'s new content into (:func:`atomic_path`'s temporary file, flushed and
    fsynced before the rename): a kill at any moment leaves the old file or the new one; a failed write (a
    full disk) raises :class:`RunFileWriteError` naming ``path`` and leaves the old file."""
    with writing(path), atomic_path(path) as tmp, tmp.open(mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def low_space_warning(folder: Path, checkpoint_bytes: int) -> str | None:
    """Warn (once per folder) when the disk of ``folder`` has room for fewer than LOW_SPACE_CHECKPOINTS
    checkpoints of ``checkpoint_bytes``; returns the warning, or None."""
    key = str(Path(folder).resolve())
    if key in _WARNED:
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= LOW_SPACE_CHECKPOINTS * checkpoint_bytes:
        return None
    _WARNED.add(key)
    message = (f"only {human(free, 'B')} free on the disk of {folder}, less than {LOW_SPACE_CHECKPOINTS} "
               f"checkpoints of about {human(checkpoint_bytes, 'B')}: the run stops when a write fails, "
               "and can then be resumed")
    logger.warning(message)
    return message


def checkpoint_epoch(run_dir: Path) -> int | None:
    """The epoch of the run folder's last.pt, or None when there is none (or it cannot be read)."""
    import torch

    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:  # mmap: reads the small pickle, not the weights
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not one to resume from
        return None


def resume_command(run_dir: Path) -> str:
    """The command line that continues this run in its own folder, with the folder's own settings (the
    command reads them from its ``.hydra`` record), from any working directory."""
    return shlex.join(["cnnbench", "train", "trainer.resume=auto", f"hydra.run.dir={Path(run_dir).absolute()}"])


def resume_fields(run_dir: Path) -> dict:
    """What summary.json records about a run stopped before its end (interrupted, a failed write): from
    which epoch it continues and the command that continues it."""
    return {"resumable_from_epoch": checkpoint_epoch(run_dir) or 0, "resume_command": resume_command(run_dir)}
