"""Which device a run gets (:mod:`cnnbench.devices`): device.index among the GPUs, the GPU driver's version."""

from __future__ import annotations

import torch


def test_the_gpu_driver_is_read_from_the_kernel_modules_file(tmp_path, monkeypatch):
    import cnnbench.devices as devices

    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.95.05  Tue Sep 23 2025\n"
                       "GCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(devices, "NVIDIA_DRIVER_FILE", str(version))
    assert devices.nvidia_driver() == "580.95.05"
    assert devices.gpu_info(torch.device("cpu")) is None


def test_device_index_picks_a_gpu_modulo_the_gpu_count(monkeypatch):
    """Parallel sweep jobs pass device.index=${hydra:job.num}: job 4 on a 3-GPU machine gets cuda:1."""
    from cnnbench.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert resolve_device("auto", 4) == torch.device("cuda", 1)
    assert resolve_device("cuda", 2) == torch.device("cuda", 2)
    assert resolve_device("auto", None) == torch.device("cuda", 0)
    assert resolve_device("cpu", 2) == torch.device("cpu")  # no GPU asked for: the index is moot
