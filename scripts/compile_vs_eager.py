"""A network's bf16, channels-last CPU training step, eager against compiled as cnnbench compiles it.

    python scripts/compile_vs_eager.py vgg11 --size 224 --batch 128 --threads 2 --rounds 6

Both run in one process on the same parameters (lr 0: the weights stay as they are): the compiled module is
cnnbench's ``compile_for_training`` with its shared Inductor cache (the first compiled step builds or loads the
graphs, timed apart), then blocks of 3 steps of each alternate, the order flipping every round; it prints each
one's median step and the median of the per-round ratios. What decided ``device.compile=auto`` (docs/speed.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from cnnbench.models import build_model
from cnnbench.speed.allocator import tune_malloc
from cnnbench.speed.compiling import compile_for_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    ns = parser.parse_args()
    tune_malloc(True)  # as a cnnbench run on the CPU
    torch.set_num_threads(ns.threads)
    torch.manual_seed(0)
    model = build_model(ns.model).to(memory_format=torch.channels_last)
    compiled = compile_for_training(model, ns.batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.rand(ns.batch, 1, ns.size, ns.size).contiguous(memory_format=torch.channels_last)  # (B, 1, S, S)
    y = torch.randint(0, 10, (ns.batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step(net: nn.Module) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    nets = {"eager": model, "compiled": compiled}
    start = time.perf_counter()
    step(compiled)
    print(f"first compiled step (compilation or cache load): {time.perf_counter() - start:.1f} s")
    for net in nets.values():
        for _ in range(2):
            step(net)
    seconds: dict[str, list[float]] = {name: [] for name in nets}
    for r in range(ns.rounds):
        for name in (list(nets) if r % 2 == 0 else list(reversed(nets))):
            start = time.perf_counter()
            for _ in range(3):
                step(nets[name])
            seconds[name].append((time.perf_counter() - start) / 3)
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:9s} step {median:.3f} s, {ns.batch / median:.1f} images/s")
    ratio = statistics.median(c / e for c, e in zip(seconds["compiled"], seconds["eager"], strict=True))
    print(f"compiled / eager (median of the rounds' ratios): {ratio:.3f}")


if __name__ == "__main__":
    main()
