"""Will a training step fit in the device's memory? An estimate before training, a clear end after.

``estimate_step_memory(spec)`` runs one image through the configured network (on PyTorch's *meta* device,
shapes only, for the big networks; on the CPU for the small ones, see there) and adds up what one
training step holds: weights, gradients, optimizer state, the dataset kept on the device, and per example the
forward activations the backward pass needs (``cnnbench summary``'s activation memory,
:func:`cnnbench.models.stats.activation_bytes`).
``check_step_fits`` refuses a step whose estimate is clearly above the memory available, naming a batch
that fits; ``explain_oom`` turns an allocator failure during training into one sentence with the largest
batch that fits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CnnbenchError
from ..fmt import human
from ..models.configured import Network
from ..schema import Section
from .spec import RunSpec

logger = logging.getLogger(__name__)

# Calibrated on the CPU with scripts/calibrate_memory.py: peak RSS of train() runs of two steps and one
# evaluation batch, minus the RSS before the run (MiB, measured vs estimated, fp32 unless named):
#   resnet18  96 px batch  64:  501 vs  460 (0.92)     resnet18 224 px batch  64: 1699 vs 1625 (0.96)
#   resnet18  96 px batch 256: 1336 vs 1247 (0.93)     resnet18 224 px batch 256: 5530 vs 5907 (1.07)
#   resnet18  96 px batch 256 bf16: 931 vs 935 (1.00)  vgg11 224 px batch 64: 1297 vs 1461 (1.13)
#   densenet  96 px batch 128:  996 vs  962 (0.97)
# so the estimate is within about 15% either way; refusals leave more than that as margin (REFUSE_ABOVE).
ACTIVATION_FACTOR = 1.0  # bytes kept per forward-output byte: the outputs themselves, saved for backward
AMP_ACTIVATION_FACTOR = 0.7  # bf16/fp16 autocast: conv and linear outputs in 2 bytes, the rest in 4
RUNTIME_OVERHEAD = 100 * 2**20  # bytes: what a run allocates beyond tensors (modules it imports, kernel caches)
# Refuse only when the estimate is clearly above what is available: it can be 15% off, and a step a
# little above "available" RAM may still run (the kernel reclaims caches).
REFUSE_ABOVE = 1.25  # estimate / available
FIT_MARGIN = 0.85  # a suggested batch keeps 15% of the available memory in reserve
IMAGE_BYTES = 28 * 28 + 8  # one uint8 28x28 image and its int64 label, as the loaders keep them
REAL_FORWARD_MAX_BYTES = 64 * 2**20  # float32 weights up to this: the estimate's forward runs on the CPU
# ... and input values up to this (a 224-pixel colour image): ResNet-18 on one 4096x4096 image takes
# 9-16 s on 2 cores, on the meta device about a second.
REAL_FORWARD_MAX_VALUES = 3 * 224 * 224


# device -> (bytes available, how measured) at the last check before training: after an allocation failed
# the failed step still holds its memory, so what is free then says nothing about what a run may use.
_BEFORE_TRAINING: dict[str, tuple[int, str]] = {}


class NotEnoughMemory(CnnbenchError):
    """A training step cannot fit in the device's memory (estimated before training, or met at run time)."""


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step holds on one device: ``fixed + per_example * batch``."""

    fixed: int  # weights, gradients, optimizer state, the dataset kept on the device
    per_example: int  # activations kept for the backward pass, the input batch

    def total(self, batch: int) -> int:
        return self.fixed + self.per_example * batch

    def largest_batch(self, available: int) -> int:
        """The largest batch whose step fits in ``available`` bytes with FIT_MARGIN kept, rounded down to
        a multiple of 8 above 8 (0 when even the fixed part does not fit)."""
        room = available * FIT_MARGIN - self.fixed
        batch = int(room // self.per_example) if room > 0 else 0
        return batch - batch % 8 if batch > 8 else batch


def optimizer_slots(optimizer: Section) -> int:
    """Tensors of optimizer state per parameter tensor: Adam's two moments, SGD's momentum buffer
    (``optimizer``: the section's schema object; Adam's has no momentum)."""
    if optimizer.name in ("adam", "adamw"):
        return 2
    return 1 if float(getattr(optimizer, "momentum", 0) or 0) > 0 else 0


def estimate_step_memory(spec: RunSpec) -> StepMemory:
    """The memory of one training step of ``spec`` on one device (this rank's share of the batch), the
    dataset's bytes as settled (:class:`cnnbench.data.sources.DataSpec`)."""
    from ..models.stats import activation_bytes, count_parameters

    network = spec.network
    size, channels = network.side, network.in_channels
    model = meta_model(network)
    params = count_parameters(model)
    # float32 bytes of every layer's output for one image. A small network runs one real image on the
    # CPU (milliseconds): the meta device's first forward imports torch's shape-checking and decomposition
    # machinery (torch._dynamo, sympy), 1.0-1.6 s of every LeNet command's start-up (measured). A big one
    # (VGG's 128 M parameters would take seconds to initialize), or one on a huge input, runs on the meta
    # device.
    if 4 * params <= REAL_FORWARD_MAX_BYTES and channels * size * size <= REAL_FORWARD_MAX_VALUES:
        with torch.random.fork_rng(devices=[]):  # its initialization draws nothing from the run's generator
            model = network.build()
    with torch.device(next(model.parameters()).device):  # the image where the weights are
        per_image = activation_bytes(model, channels, size)
    amp = spec.device.precision in ("bf16", "fp16")
    factor = AMP_ACTIVATION_FACTOR if amp else ACTIVATION_FACTOR
    # weights, gradients and optimizer state in float32; the dataset; the runtime's own
    fixed = 4 * params * (2 + optimizer_slots(spec.sections["optimizer"])) + spec.data.bytes + RUNTIME_OVERHEAD
    per_example = int(per_image * factor) + 4 * channels * size * size  # + the float32 input
    return StepMemory(fixed=fixed, per_example=per_example)


def meta_model(network: Network) -> torch.nn.Module:
    """The configured network on the meta device (shapes only: nothing allocated, nothing computed), or on
    the CPU for the few that cannot be built without real values (torchvision's RegNets compute their
    widths from tensors)."""
    from ..models.external import ModelBuildError

    try:
        with torch.device("meta"):
            return network.build()
    except (ModelBuildError, NotImplementedError, RuntimeError):
        with torch.random.fork_rng(devices=[]):  # its initialization draws nothing from the run's generator
            return network.build()


# ------------------------------------------------------------------------------------ what is there


def available_memory(device: torch.device, live: bool = False) -> tuple[int, str] | None:
    """(bytes a run may use on ``device``, how that was measured), or None when it cannot be known.

    CPU: the kernel's MemAvailable, capped by a cgroup memory limit (containers, SLURM). CUDA: free memory
    from ``torch.cuda.mem_get_info`` (plus what this process has cached) when ``live`` or when CUDA is
    already initialized; otherwise the device's total memory, so that a check before launch creates no
    CUDA context (and none on another rank's GPU).
    """
    if device.type == "cpu":
        return _cpu_available()
    if device.type == "cuda":
        index = device.index if device.index is not None else 0
        if live or torch.cuda.is_initialized():
            free, _total = torch.cuda.mem_get_info(index)
            return free + torch.cuda.memory_reserved(index), "free on the GPU"
        return torch.cuda.get_device_properties(index).total_memory, "the GPU's total memory"
    return None  # MPS shares the system's memory in ways torch does not report


def _cpu_available() -> tuple[int, str] | None:
    available = _meminfo_available()
    if available is None:
        return None
    what = "available RAM"
    for room, why in ((_cgroup_room(), "left under this process group's memory limit"),
                      (_address_space_room(), "left under this process's address-space limit (ulimit -v)")):
        if room is not None and room < available:
            available, what = room, why
    return available, what


def _address_space_room() -> int | None:
    """Bytes of address space left under RLIMIT_AS (``ulimit -v``, some batch schedulers), or None."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        status = Path("/proc/self/status").read_text()
        used = int(status.split("VmSize:")[1].split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return max(0, soft - used)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes left under the cgroup's memory limit (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        return max(0, int(limit) - usage)
    return None


# --------------------------------------------------------------------------------------- the checks


def check_step_fits(spec: RunSpec, device: torch.device, world_size: int = 1, live: bool = False) -> None:
    """Refuse a run whose training step clearly cannot fit in ``device``'s memory."""
    room = available_memory(device, live)
    if room is None:
        return
    _BEFORE_TRAINING[str(device)] = room
    available, what = room
    need = estimate_step_memory(spec)
    batch = _per_rank_batch(spec, world_size)
    if need.total(batch) <= REFUSE_ABOVE * available:
        return
    raise NotEnoughMemory(
        f"a training step of {_what_runs(spec, world_size)} needs about {human(need.total(batch), 'B')} "
        f"(estimated: weights, gradients, optimizer state and activations), but only "
        f"{human(available, 'B')} is {what} on {device.type}; {_suggestion(need, available, world_size)}"
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the allocators' out-of-memory errors: CUDA's OutOfMemoryError, the CPU allocator's
    "can't allocate memory", MPS's "out of memory"."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "DefaultCPUAllocator: can't allocate memory" in text or "DefaultCPUAllocator: not enough memory" in text
        or "MPS backend out of memory" in text
    )


def explain_oom(exc: BaseException, spec: RunSpec | None, device: torch.device | None,
                world_size: int = 1) -> NotEnoughMemory | None:
    """One sentence for an out-of-memory error met during training (None for other errors, and before the
    run's spec exists: nothing to estimate from)."""
    if spec is None or not is_out_of_memory(exc):
        return None
    need = estimate_step_memory(spec)
    room = None if device is None else _BEFORE_TRAINING.get(str(device)) or available_memory(device, live=True)
    advice = "try a smaller trainer.batch_size or dataset.resize"
    if room is not None:
        available, _what = room
        # The step at this batch did not fit, whatever the estimate says: suggest at most half of it.
        advice = _suggestion(need, available, world_size, at_most=_per_rank_batch(spec, world_size) // 2)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return NotEnoughMemory(f"out of memory with {_what_runs(spec, world_size)} ({_allocator_words(first)}); "
                           f"{advice}")


def _allocator_words(first_line: str) -> str:
    """The allocator's own words without its source location: 'can't allocate memory: you tried ...'."""
    marker = "DefaultCPUAllocator: "
    text = first_line.split(marker, 1)[1] if marker in first_line else first_line
    return text.split(". Error code")[0][:200]


def _per_rank_batch(spec: RunSpec, world_size: int) -> int:
    return max(1, spec.trainer.batch_size // max(1, world_size))


def _what_runs(spec: RunSpec, world_size: int) -> str:
    network = spec.network
    size = network.side
    per_rank = f" ({_per_rank_batch(spec, world_size)} per process)" if world_size > 1 else ""
    return (f"{network.name} at batch size {spec.trainer.batch_size}{per_rank}, {size}x{size} inputs, "
            f"{spec.device.precision} precision")


def _suggestion(need: StepMemory, available: int, world_size: int, at_most: int | None = None) -> str:
    per_rank = need.largest_batch(available)
    if at_most is not None:
        per_rank = min(per_rank, at_most)
    if per_rank < 1:
        return ("even a batch of one does not fit (the weights, gradients and optimizer state alone need "
                f"{human(need.fixed, 'B')}): try a smaller dataset.resize or another model")
    batch = per_rank * max(1, world_size)
    return f"the largest batch that fits is about {batch}: try trainer.batch_size={batch} (or a smaller dataset.resize)"


def step_memory_bytes(spec: RunSpec) -> int:
    """The estimate of one step at the configured batch (for scripts and summaries)."""
    return estimate_step_memory(spec).total(spec.trainer.batch_size)
