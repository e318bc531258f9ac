"""Which device a run uses, and waiting for it: the only module that asks torch what hardware exists."""

from __future__ import annotations

import torch

from .errors import ConfigError

DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(kind: str, index: int | None = None) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; ``cuda`` without a GPU is refused.

    ``index`` picks a GPU (modulo the GPU count), so parallel sweep jobs can each take their own.
    """
    if kind not in DEVICE_TYPES:
        raise ConfigError(f"unknown device.type {kind!r}; use {', '.join(DEVICE_TYPES)}")
    if kind in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0 if index is None else int(index) % torch.cuda.device_count())
    if kind == "cuda":
        raise ConfigError(
            "device=cuda was asked for but no CUDA device is available "
            "(torch.cuda.is_available() is False); use device=auto or device=cpu"
        )
    if kind == "mps" and not _mps_available():
        raise ConfigError("device=mps was asked for but Apple's MPS backend is not available")
    if kind == "auto":
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    return torch.device(kind)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is worth offering on ``device`` (CUDA with bf16, or any CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def device_name(device: torch.device) -> str:
    """'cuda (NVIDIA H200)', 'cpu' or 'mps', as summaries and tables print it."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


# Linux: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  <build date>"
NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version ('580.95.05') from the Linux kernel module's file, else from NVML when the
    ``pynvml`` module (nvidia-ml-py) is installed; None when neither says."""
    try:
        with open(NVIDIA_DRIVER_FILE) as f:
            words = f.readline().split()
        if "Module" in words and words.index("Module") + 1 < len(words):
            return words[words.index("Module") + 1]
    except OSError:
        pass
    try:
        import pynvml  # optional (nvidia-ml-py)

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:  # noqa: BLE001 - not installed, no NVIDIA driver: not known
        return None


def gpu_info(device: torch.device) -> dict | None:
    """The GPU a run uses, for the record: name, memory, compute capability, the driver and the CUDA and
    cuDNN versions torch was built with; None off CUDA."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"name": props.name, "memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}",
            "driver": nvidia_driver(), "cuda": torch.version.cuda, "cudnn": cudnn}
