"""How much the logging points cost: host reads per epoch and their share of the epoch's time.

    python scripts/profile_logging.py [overrides...]     e.g. experiment=d2l_lenet device=cpu

Profiles one epoch of cnnbench's loop with torch.profiler, counting the device-to-host reads (the
``aten::_local_scalar_dense`` behind ``.item()`` and the copies of the metric sums to the host, which
wait for the device) and the time spent in the metric reads, then times one epoch with the configured
logs_per_epoch against one with only the epoch-end read.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

import cnnbench.run.loop as engine
from cnnbench.config import compose_config
from cnnbench.run.build import build_run
from cnnbench.run.loop import LoopHooks, log_points, train_one_epoch
from cnnbench.run.validate import validate_config


def epoch_seconds(run, points: set[int], epoch: int) -> float:
    t0 = time.perf_counter()
    train_one_epoch(run.model, run.train_loader, run.optimizer, None, run.precision, epoch=epoch,
                    global_step=0, hooks=LoopHooks(log_points=points), limit_batches=None)
    return time.perf_counter() - t0


def main(overrides: list[str]) -> None:
    cfg = compose_config(["trainer.progress_bar=false", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(validate_config(cfg), Path(tmp))
        n = len(run.train_loader)
        points = log_points(n, int(cfg.trainer.logs_per_epoch))
        epoch_seconds(run, points, 0)  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
        reads = {"count": 0, "seconds": 0.0}
        original = engine._global_sums

        def timed_sums(*args, **kwargs):  # the loop's only host reads go through here
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                reads["count"] += 1
                reads["seconds"] += time.perf_counter() - t0

        engine._global_sums = timed_sums
        with profile(activities=activities) as prof:
            total = epoch_seconds(run, points, 1)
        engine._global_sums = original
        items = sum(e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense")
        print(f"{cfg.model.name}: {n} steps/epoch, {len(points)} logging points; metric reads: {reads['count']} "
              f"taking {reads['seconds'] * 1e3:.1f} ms = {100 * reads['seconds'] / total:.2f}% of the profiled "
              f"epoch ({total:.2f} s); other .item() calls: {items}")
        with_logs = min(epoch_seconds(run, points, e) for e in (2, 4))
        without = min(epoch_seconds(run, {n - 1}, e) for e in (3, 5))
        print(f"epoch time: {with_logs:.3f} s with {len(points)} logging points, {without:.3f} s with one: "
              f"logging costs {100 * (with_logs / without - 1):+.2f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
