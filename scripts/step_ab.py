"""One book network's eager training step (bf16 autocast, channels-last, as device=fast trains the 96/224-pixel
networks on a CPU) without (A) and with (B) one of cnnbench's CPU speed-ups, in one process: the same weights and
batch, single steps alternating A, B for --rounds rounds; prints the medians and each round's B/A.

    python scripts/step_ab.py vgg11 --size 224 --batch 128 --change maxpool --rounds 10
    python scripts/step_ab.py resnet18 --size 96 --batch 256 --change gemm --rounds 6

--change maxpool: fused_cpu.c's max pool (and the ReLU after it), cnnbench.speed.cpu.fused.use_fused_kernels;
--change gemm: the weight gradient as one GEMM on the layers the start-up timing would choose
(cnnbench.speed.cpu.kernels.time_gemm_weight_grads at this batch). Both sides have device.fast_pooling's swaps.
A shared machine is noisy: read the rounds, and run it more than once.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from cnnbench.models import build_model
from cnnbench.speed.allocator import tune_malloc
from cnnbench.speed.cpu.fused import use_fused_kernels
from cnnbench.speed.cpu.kernels import (
    faster_as_gemm,
    pool_before_relu,
    set_gemm_weight_grads,
    time_gemm_weight_grads,
    use_fast_pooling,
)


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One SGD step of ``model`` on (x, y) under bf16 autocast, as a closure."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--change", choices=["maxpool", "gemm"], required=True)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    tune_malloc(True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a = build_model(args.model, in_channels=1, num_classes=10)
    use_fast_pooling(a)
    pool_before_relu(a)
    b = copy.deepcopy(a)
    x = torch.rand(args.batch, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)  # (B, 1, S, S)
    y = torch.randint(0, 10, (args.batch,))
    if args.change == "maxpool":
        changed = use_fused_kernels(b)
    else:
        ratios = time_gemm_weight_grads(b, x, args.batch, torch.bfloat16, True)
        changed = set_gemm_weight_grads(b, faster_as_gemm(ratios))
        print("GEMM backward / ATen backward time per layer:", {k: round(v, 2) for k, v in ratios.items()})
    print(f"B changes: {', '.join(changed) or 'nothing'}")
    steps = [step_fn(m.to(memory_format=torch.channels_last), x, y) for m in (a, b)]
    for s in steps * 2:  # warm-up: oneDNN's primitives, the allocator
        s()
    times: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for s, t in zip(steps, times, strict=True):
            t0 = time.perf_counter()
            s()
            t.append(time.perf_counter() - t0)
    ma, mb = statistics.median(times[0]), statistics.median(times[1])
    rounds = [round(tb / ta, 3) for ta, tb in zip(*times, strict=True)]
    print(f"{args.model} {args.size} px, batch {args.batch}, {args.threads} threads: A {ma * 1e3:.0f} ms, "
          f"B {mb * 1e3:.0f} ms, B/A {mb / ma:.3f}; rounds' B/A {rounds}")


if __name__ == "__main__":
    main()
