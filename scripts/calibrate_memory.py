"""Measure the peak memory of real training steps and compare it with cnnbench's estimate.

    python scripts/calibrate_memory.py                      # the default table (CPU, a few minutes)
    python scripts/calibrate_memory.py resnet18:224:64 lenet:28:256:bf16

Each case (MODEL:RESIZE:BATCH[:PRECISION]) runs in a fresh process: ``train()`` of two steps and one
evaluation batch on the packaged sample, CPU, no checkpoint. Measured = peak RSS (``ru_maxrss``) minus
the RSS before the run; estimate = ``cnnbench.run.memory.estimate_step_memory``. The ratio is what
``cnnbench/run/memory.py``'s factors were set from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

DEFAULT = ["resnet18:96:64", "resnet18:96:256", "resnet18:224:64", "resnet18:224:256",
           "resnet18:96:256:bf16", "vgg11:224:64", "densenet:96:128", "lenet:28:256"]

CHILD = r"""
import json, os, resource, sys
from cnnbench.config import compose_config
from cnnbench.run.memory import estimate_step_memory
from cnnbench.run.validate import validate_config
from cnnbench.run.train import train
model, size, batch, precision, out = sys.argv[1:6]
cfg = compose_config(["dataset=fashion_mnist_mini", f"model={model}", f"dataset.resize={size}",
                      f"trainer.batch_size={batch}", "trainer.epochs=1", "trainer.limit_train_batches=2",
                      "trainer.limit_eval_batches=1", "trainer.checkpoint=false", "device=cpu",
                      "device.channels_last=false", f"device.precision={precision}", "trainer.progress_bar=false"])
page = os.sysconf("SC_PAGE_SIZE")
before = int(open("/proc/self/statm").read().split()[1]) * page
summary = train(cfg, out)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
est = estimate_step_memory(validate_config(cfg)).total(int(batch))
print(json.dumps({"status": summary["status"], "measured": peak - before, "estimate": est}))
"""


def measure(case: str) -> dict:
    model, size, batch, *rest = case.split(":")
    precision = rest[0] if rest else "fp32"
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-c", CHILD, model, size, batch, precision, out],
                              capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"case": case, "error": proc.stderr.strip().splitlines()[-1:]}
    return {"case": case, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> int:
    cases = sys.argv[1:] or DEFAULT
    print(f"{'case':<24} {'measured':>10} {'estimate':>10} {'est/meas':>8}")
    for case in cases:
        r = measure(case)
        if "error" in r:
            print(f"{case:<24} error: {r['error']}")
            continue
        print(f"{case:<24} {r['measured'] / 2**20:>8.0f}Mi {r['estimate'] / 2**20:>8.0f}Mi "
              f"{r['estimate'] / r['measured']:>8.2f}  {r['status']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
