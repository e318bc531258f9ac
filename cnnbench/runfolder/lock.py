"""One writer per run folder: an OS lock on ``<run_dir>/.lock``.

The kernel drops the lock when the holder ends, however it ends (SIGKILL included), so a dead process
never leaves a stale lock. The file stays, holding the last holder's pid, host and start time, which the
refusal names. Within one process the lock is re-entrant: ``cnnbench train`` takes it before Hydra writes
anything and ``train()`` takes it again, without waiting on itself.

* POSIX: ``fcntl.flock``, whose locks belong to the open file. Over NFS, Linux maps flock onto the
  server's byte-range locks, so two machines sharing a run folder see each other's lock too.
* Windows: ``msvcrt.locking`` on one byte at :data:`WINDOWS_LOCK_OFFSET`, past the holder's note: Windows
  locks are mandatory, and a lock over the note would keep the refused process from reading who holds it.

A process may also wait for the lock (``wait_s``): the start-up timing decisions of
:mod:`cnnbench.speed.decisions` are folders that processes take turns in, one timing while the others wait
to read its result.

Each module is imported inside the functions that use it: Windows has no ``fcntl`` and POSIX no
``msvcrt``, and ``cnnbench train`` imports this module on both.

Not the ``filelock`` package, which cannot keep the holder's note: its Unix lock (3.x) opens the file with
``O_TRUNC`` before trying the lock, so every refused process would erase the note; its Windows lock covers
byte 0 (the note) and deletes the file on release.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from ..errors import RunFolderInUse
from .names import LOCK

logger = logging.getLogger(__name__)

_WINDOWS = sys.platform == "win32"
# The Windows lock byte: past the note (NOTE_BYTES), where a mandatory lock keeps no reader out. Windows
# lets a process lock bytes beyond the end of a file.
WINDOWS_LOCK_OFFSET = 1 << 20
WAIT_POLL_S = 0.05  # how often a waiting process tries the lock again
NOTE_BYTES = 4096  # the most of the holder's note that is read
# errno of "another process holds it": flock says EWOULDBLOCK (EAGAIN; EACCES on some file systems), the
# Windows C runtime's _locking EACCES (EDEADLOCK when a blocking lock gives up).
_BUSY = frozenset({errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)})
# Closed in the programs a run starts (compilers, torchrun's workers): one that outlived the run would keep
# the folder locked (Python's default since 3.4, said here because the lock depends on it); and binary on
# Windows, whose os.open would otherwise turn the note's "\n" into "\r\n".
_OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_BINARY", 0)

# real path of a locked run folder -> [file descriptor holding the lock, nesting depth], this process
_HELD: dict[str, list[int]] = {}


@contextlib.contextmanager
def run_folder_lock(run_dir: Path | str, enabled: bool = True, wait_s: float = 0.0) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; raises :class:`RunFolderInUse` before touching anything
    when another live process holds it (still after ``wait_s`` seconds of waiting for it: a folder that
    processes take turns in, like a cache entry). ``enabled=False`` (torchrun ranks other than 0) does nothing."""
    key = acquire(Path(run_dir), wait_s) if enabled else None
    try:
        yield
    finally:
        if key is not None:
            release(key)


def acquire(run_dir: Path, wait_s: float = 0.0) -> str | None:
    """Take the lock (creating the folder when it is new), waiting up to ``wait_s`` seconds for another
    holder to let go; the key for :func:`release`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    fd = os.open(Path(key) / LOCK, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        # Polled, not a blocking flock: the same loop works with Windows' locks, and the wait has an end.
        while not (taken := _try_lock(fd)) and time.monotonic() < deadline:
            time.sleep(WAIT_POLL_S)
    except OSError as exc:
        os.close(fd)
        # A file system without locks: go on, but say that a second writer would not be noticed.
        logger.warning("cannot lock %s (%s): a second process writing this folder would not be noticed",
                       run_dir, exc.strerror or exc)
        return None
    if not taken:
        holder = _holder_text(fd)
        os.close(fd)
        raise RunFolderInUse(
            f"run folder {run_dir} is in use by {holder}: wait for it to end, or write to another "
            "folder (hydra.run.dir=...)")
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
    with contextlib.suppress(OSError):
        _unlock(fd)
    os.close(fd)  # POSIX: closing the last descriptor of the open file drops the flock anyway


def holder_of(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock, when another process does; None when it is free or held here."""
    path = Path(run_dir) / LOCK
    if os.path.realpath(run_dir) in _HELD or not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if not _try_lock(fd, shared=True):
            return _holder_text(fd)
        _unlock(fd)
        return None
    except OSError:  # no locks on this file system: nobody can be seen holding it
        return None
    finally:
        os.close(fd)


def _try_lock(fd: int, shared: bool = False) -> bool:
    """Lock ``fd`` without waiting: True when taken, False when another process holds the lock; raises
    OSError when the file system has no locks. ``shared`` (a probe) takes a shared lock where POSIX offers
    one; Windows has none, so a probe there holds the exclusive lock for its moment."""
    try:
        if _WINDOWS:
            import msvcrt  # Windows only

            os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)  # msvcrt locks from the file position
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl  # POSIX only

            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    """Drop the lock ``_try_lock`` took. POSIX: closing the file would drop it too; Windows unlocks a
    closed file's bytes only "when system resources allow", so the next run could be refused meanwhile."""
    if _WINDOWS:
        import msvcrt

        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:300]}
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)  # no os.pwrite on Windows
        os.write(fd, (json.dumps(info) + "\n").encode())
    except OSError:  # a full disk: the lock holds without its note
        pass


def _holder_text(fd: int) -> str:
    """'process 1234 on host h (started 2025-01-01T10:00:00)' from the lock file, or a vague phrase."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)  # no os.pread on Windows
        info = json.loads(os.read(fd, NOTE_BYTES).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info.get("pid"):
        return "another process"
    return f"process {info['pid']} on host {info.get('host', '?')} (started {info.get('started', '?')})"
