"""Names of the files in a run folder, what makes a folder one and reading its summary: one place for the
writers (train, launch) and the readers (eval, report, sweeps).

A run folder holds:

- ``summary.json`` (:data:`SUMMARY`): status, error and final numbers, rewritten as the run goes;
- ``metrics.jsonl`` (:data:`METRICS`): one JSON object per logged step or epoch;
- ``last.pt`` (:data:`CHECKPOINT`): the checkpoint a resumed run starts from;
- ``best.pt`` (:data:`BEST_CHECKPOINT`): the checkpoint of the best epoch by the monitored metric;
- ``eval/`` (:data:`EVAL_DIR`): what ``cnnbench eval`` writes (``<split>.json`` and its pictures);
- ``.hydra/`` (:data:`HYDRA_DIR`): Hydra's copy of the composed config (:data:`CONFIG`) and of the
  command-line overrides (:data:`OVERRIDES`);
- TensorBoard's ``events.out.tfevents.*`` files;
- ``.lock`` (:data:`LOCK`): the one-writer lock (:mod:`cnnbench.runfolder.lock`), holding its last holder's pid;
- ``.hydra/resumes/TIME/`` (:data:`RESUMES_DIR`): the config and overrides of every later start (resume).

Never imports torch: the report reads these files without it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
HYDRA_DIR = ".hydra"
CONFIG = Path(HYDRA_DIR) / "config.yaml"
OVERRIDES = Path(HYDRA_DIR) / "overrides.yaml"
EVAL_DIR = "eval"
LOCK = ".lock"
RESUMES_DIR = Path(HYDRA_DIR) / "resumes"


def is_run_folder(path: Path) -> bool:
    """A folder that ``cnnbench train`` wrote: Hydra's copy of its config (written first) or its summary."""
    return (path / CONFIG).is_file() or (path / SUMMARY).is_file()


def find_run_folders(root: Path) -> list[Path]:
    """``root`` when it is a run folder, else every run folder below it (a sweep's jobs, a tree of runs),
    in natural order ('10_...' after '2_...': Hydra's job numbers are not zero-padded)."""
    if is_run_folder(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        if is_run_folder(Path(dirpath)):
            found.append(Path(dirpath))
            dirnames[:] = []  # a run folder holds no other run
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # .hydra, .git, caches
    return sorted(found, key=lambda p: natural_key(str(p)))


def natural_key(text: str) -> list:
    """A sort key that orders the numbers in ``text`` by value: '10_model=x' after '2_model=y'."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def read_summary(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The run's summary.json and, when it cannot be used, why ("no summary", unreadable, not an object)."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return {}, "no summary"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"unreadable {SUMMARY}: {exc}"
    if not isinstance(data, dict):
        return {}, f"{SUMMARY} is not a JSON object"
    return data, None
