"""One writer per run folder: an OS lock on ``<run_dir>/.lock``.

``fcntl.flock`` locks belong to the open file; the kernel drops them when the holder ends, however it
ends (SIGKILL included), so a dead process never leaves a stale lock. The file stays, holding the last
holder's pid, host and start time, which the refusal names. Over NFS, Linux maps flock onto the
server's byte-range locks, so two machines sharing a run folder see each other's lock too.

Within one process the lock is re-entrant: ``cnnbench train`` takes it before Hydra writes anything
and ``train()`` takes it again, without waiting on itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from ..errors import RunFolderInUse
from .names import LOCK

logger = logging.getLogger(__name__)

# real path of a locked run folder -> [file descriptor holding the lock, nesting depth], this process
_HELD: dict[str, list[int]] = {}


@contextlib.contextmanager
def run_folder_lock(run_dir: Path | str, enabled: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; raises :class:`RunFolderInUse` before touching anything
    when another live process holds it. ``enabled=False`` (torchrun ranks other than 0) does nothing."""
    key = acquire(Path(run_dir)) if enabled else None
    try:
        yield
    finally:
        if key is not None:
            release(key)


def acquire(run_dir: Path) -> str | None:
    """Take the lock (creating the folder when it is new); the key for :func:`release`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    fd = os.open(Path(key) / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder_text(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFolderInUse(
                f"run folder {run_dir} is in use by {holder}: wait for it to end, or write to another "
                "folder (hydra.run.dir=...)") from None
        # A file system without locks: go on, but say that a second writer would not be noticed.
        logger.warning("cannot lock %s (%s): a second process writing this folder would not be noticed",
                       run_dir, exc.strerror or exc)
        return None
    _write_holder(fd)
    _HELD[key] = [fd, 1]
    return key


def release(key: str) -> None:
    """Undo one :func:`acquire`; the last one empties the file and drops the lock."""
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[key]
    fd = entry[0]
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # no stale holder text once nobody holds it
    os.close(fd)  # closing the last descriptor of the open file drops the flock


def holder_of(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock, when another process does; None when it is free or held here."""
    path = Path(run_dir) / LOCK
    if os.path.realpath(run_dir) in _HELD or not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _holder_text(fd)
    else:
        return None
    finally:
        os.close(fd)


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:300]}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:  # a full disk: the lock holds without its note
        pass


def _holder_text(fd: int) -> str:
    """'process 1234 on host h (started 2025-01-01T10:00:00)' from the lock file, or a vague phrase."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    return f"process {info['pid']} on host {info.get('host', '?')} (started {info.get('started', '?')})"
