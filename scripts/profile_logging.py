"""How much the logging points cost: host reads per epoch and their share of the epoch's time.

    python scripts/profile_logging.py [overrides...]     e.g. experiment=d2l_lenet device=cpu

Profiles one epoch of cnnbench's loop with torch.profiler and counts ``aten::_local_scalar_dense`` (the
op behind ``.item()``, a device-to-host read that waits for the device), then times one epoch with the
configured logs_per_epoch against one with only the epoch-end read.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from cnnbench.config import compose_config
from cnnbench.engine import LoopHooks, log_points, train_one_epoch
from cnnbench.train import setup


def epoch_seconds(run, points: set[int], epoch: int) -> float:
    t0 = time.perf_counter()
    train_one_epoch(run.model, run.train_loader, run.optimizer, None, run.precision, epoch=epoch,
                    global_step=0, hooks=LoopHooks(log_points=points), limit_batches=None)
    return time.perf_counter() - t0


def main(overrides: list[str]) -> None:
    cfg = compose_config(["trainer.progress_bar=false", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        run = setup(cfg, Path(tmp))
        n = len(run.train_loader)
        points = log_points(n, int(cfg.trainer.logs_per_epoch))
        epoch_seconds(run, points, 0)  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            total = epoch_seconds(run, points, 1)
        reads = [e for e in prof.key_averages() if e.key == "aten::_local_scalar_dense"]
        count = sum(e.count for e in reads)
        read_s = sum(e.cpu_time_total for e in reads) / 1e6
        print(f"{cfg.model.name}: {n} steps/epoch, {len(points)} logging points, {count} host reads, "
              f"{read_s * 1e3:.1f} ms in them = {100 * read_s / total:.2f}% of the profiled epoch ({total:.2f} s)")
        with_logs = min(epoch_seconds(run, points, e) for e in (2, 4))
        without = min(epoch_seconds(run, {n - 1}, e) for e in (3, 5))
        print(f"epoch time: {with_logs:.3f} s with {len(points)} logging points, {without:.3f} s with one: "
              f"logging costs {100 * (with_logs / without - 1):+.2f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
