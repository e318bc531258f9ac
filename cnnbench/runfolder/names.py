"""Names of the files in a run folder: one place for the writers (train, launch) and the readers (report).

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

from pathlib import Path

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
