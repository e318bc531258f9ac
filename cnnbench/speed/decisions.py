"""Start-up timing decisions, kept on disk so that the same command gives the same numbers whatever the load.

What start-up timing decides (:mod:`cnnbench.speed.settings`): the precision and the memory layout where
``device.precision`` / ``device.channels_last`` are ``auto``, and which convolutions compute their weight
gradient from channels-last copies (``device.conv_weight_grad=auto``). Timings follow the machine's load,
and the choices round floats differently (NCHW and channels-last LeNet-BN end an epoch at train loss
1.724481964 and 1.724486732), so timing again in every run would let the load move the metrics. Instead
the decision is timed once per key and kept:

key: the machine (:func:`cnnbench.machine.hardware_key`: CPU name, usable CPUs, torch's threads, the GPU),
torch's version, the model and its arguments, the input (channels, side, classes), the batch one process
trains on, and the device options that shape the question (the candidates, whether the convolutions are
timed, compile, fast pooling, fused kernels).

``device.autotune``: ``cached`` (default) uses the kept decision, timing and keeping one when there is none;
``refresh`` times again and keeps the new decision; ``always`` times every run and keeps nothing (the choice
then follows the load, as before decisions were kept).

Files: ``<cache root>/autotune/<16 hex digits of the key's SHA-256>/decision.json`` (``$CNNBENCH_AUTOTUNE_CACHE``
replaces ``<cache root>/autotune``), written atomically (:func:`cnnbench.runfolder.disk.atomic_write`) while
holding the entry folder's lock (:mod:`cnnbench.runfolder.lock`): sweep jobs that start together time once,
the others wait for that decision and read it. A file that is not a decision for this key (torn, hand-edited,
another format) is warned about, timed anew and replaced.

A decision timed while other programs kept the cores busy is used by that run only, not kept: the load
decides such a timing more than the candidates do (measured, 2-core Xeon, LeNet at 1 thread: a decision
timed beside a test suite and a training kept channels-last at "17,696 against 9,277 images/s", where a
quiet machine trains it at 19,170-19,806 against 24,369-24,569 in NCHW: every later run of that key lost a
fifth of its speed). The timing's window is read from ``/proc/stat`` (:func:`cnnbench.speed.load.others_cores`): the
cores other programs used while it ran, against the cores the run's threads leave them. The next start on
a quiet machine times again and keeps its decision; the summary's ``speed.autotune`` says which happened
(``file`` null, ``others_cores``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..config import cache_root
from ..errors import RunFileWriteError, RunFolderInUse
from ..runfolder.disk import atomic_write
from ..runfolder.lock import holder_of, run_folder_lock
from .load import SLACK, cpu_sample, others_cores, usable_cpu_ids

logger = logging.getLogger(__name__)

CACHE_ENV = "CNNBENCH_AUTOTUNE_CACHE"
DECISION = "decision.json"
# raised when a decision's meaning changes: older files are then timed anew. 2: decisions are kept only when
# timed on a quiet machine (format 1 files may have been timed under load)
FORMAT = 2
MODES = ("cached", "refresh", "always")
# cores other programs may use while a decision is timed, beyond those the run's threads leave free (a
# shell, a file watcher), for the decision to be kept; $CNNBENCH_AUTOTUNE_LOAD_TOLERANCE replaces it ("inf":
# keep every decision, whatever the load, as format 1 did)
LOAD_TOLERANCE = SLACK  # the thread follower's: the same stray work of others, in cores
TOLERANCE_ENV = "CNNBENCH_AUTOTUNE_LOAD_TOLERANCE"
WAIT_S = 900.0  # another process is timing the same key: wait this long for its decision, then time alone
CHOICE_TYPES = {"precision": str, "channels_last": bool, "nhwc_weight_grads": list, "gemm_weight_grads": list}


def decisions_dir() -> Path:
    """Where decisions are kept: ``$CNNBENCH_AUTOTUNE_CACHE``, else ``~/.cache/cnnbench/autotune``."""
    return Path(os.environ.get(CACHE_ENV) or cache_root() / "autotune")


def entry_folder(key: dict) -> Path:
    """The folder of ``key``'s decision (the key as sorted JSON, hashed)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return decisions_dir() / digest


def read_decision(path: Path, key: dict) -> dict | None:
    """The kept decision for ``key`` at ``path``; None when there is none, and (with a warning) when the
    file is not a readable decision for this key."""
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        choice = entry["choice"]
        problem = ("another format" if entry.get("format") != FORMAT else "another key" if entry.get("key") != key
                   else "" if all(isinstance(choice.get(k), t) for k, t in CHOICE_TYPES.items()) else "a bad choice")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        logger.warning("ignoring the start-up timing decision %s (%s): timing again and replacing it", path, problem)
        return None
    return entry


def write_decision(path: Path, key: dict, entry: dict) -> bool:
    """Keep ``entry`` at ``path`` (atomically); False, with a warning, when it cannot be written."""
    try:
        with atomic_write(path) as f:
            json.dump({"format": FORMAT, "key": key, **entry}, f, indent=2, sort_keys=True)
            f.write("\n")
    except RunFileWriteError as exc:
        logger.warning("start-up timing decision not kept: %s", exc)
        return False
    return True


def decide(key: dict, mode: str, time_it: Callable[[], dict]) -> tuple[dict, dict]:
    """The decision for ``key`` and where it came from.

    ``time_it()`` times the candidates and returns ``{"choice": {...}, "timings": {...}}``; it runs unless
    ``mode`` is ``cached`` and a decision is kept. Returns that entry and the record for the summary:
    ``{"mode", "source": "cache" | "timed", "file": the decision's path (None: not kept), "decided": when it
    was timed (UTC), "key"}``.
    """
    if mode not in MODES:
        raise ValueError(f"device.autotune must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "always":
        return _timed(time_it, key, mode, None)
    folder = entry_folder(key)
    path = folder / DECISION
    with contextlib.ExitStack() as held:
        try:
            holder = holder_of(folder)
            if holder:
                logger.info("waiting for %s, which is timing the same start-up decision", holder)
            held.enter_context(run_folder_lock(folder, wait_s=WAIT_S))
        except (RunFolderInUse, OSError) as exc:  # held too long by another process, or a cache we cannot write
            logger.warning("start-up timing decision not kept (%s): timing for this run only",
                           f"{folder} still locked after {WAIT_S:.0f} s" if isinstance(exc, RunFolderInUse) else exc)
            return _timed(time_it, key, mode, None)
        entry = read_decision(path, key) if mode == "cached" else None
        if entry is not None:
            logger.debug("start-up timing: the decision kept in %s (device.autotune=refresh times again)", path)
            return entry, _record(entry, key, mode, "cache", path)
        entry, record = _timed(time_it, key, mode, path)
        if not quiet_enough(entry.get("others_cores")):
            logger.info("start-up timing ran while other programs kept %.1f cores busy: its choice is used for "
                        "this run, not kept (a start on a quieter machine times again)", entry["others_cores"])
            record["file"], record["not_kept"] = None, "load"
        elif not write_decision(path, key, entry):
            record["file"] = None
        return entry, record


def quiet_enough(others: float | None, threads: int | None = None, cores: int | None = None) -> bool:
    """Whether a timing during which other programs kept ``others`` cores busy may decide later runs: they
    used no more than the cores the run's ``threads`` (default: torch's count) leave free of the usable
    ``cores``, plus LOAD_TOLERANCE. None (no reading on this OS): kept, as before."""
    if others is None:
        return True
    threads = torch.get_num_threads() if threads is None else threads
    cores = len(usable_cpu_ids()) if cores is None else cores
    return others <= max(0, cores - threads) + load_tolerance()


def load_tolerance() -> float:
    """LOAD_TOLERANCE, or ``$CNNBENCH_AUTOTUNE_LOAD_TOLERANCE`` (cores, a float; "inf" keeps every decision)."""
    value = os.environ.get(TOLERANCE_ENV)
    if not value:
        return LOAD_TOLERANCE
    try:
        return float(value)
    except ValueError:
        logger.warning("$%s=%r is not a number of cores: using %s", TOLERANCE_ENV, value, LOAD_TOLERANCE)
        return LOAD_TOLERANCE


def _timed(time_it: Callable[[], dict], key: dict, mode: str, path: Path | None) -> tuple[dict, dict]:
    before = cpu_sample()
    entry = time_it()
    after = cpu_sample()
    others = round(others_cores(before, after), 2) if before is not None and after is not None else None
    entry = {**entry, "decided": datetime.now(timezone.utc).isoformat(timespec="seconds"), "others_cores": others}
    return entry, _record(entry, key, mode, "timed", path)


def _record(entry: dict, key: dict, mode: str, source: str, path: Path | None) -> dict:
    return {"mode": mode, "source": source, "file": None if path is None else str(path),
            "decided": entry.get("decided"), "others_cores": entry.get("others_cores"), "key": key}
