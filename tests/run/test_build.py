"""A run's set-up (:mod:`cnnbench.run.build`): deterministic kernels set both ways in one process, device.index
reaching the device choice."""

from __future__ import annotations

import torch

from cnnbench.run.train import train
from tests.helpers import compose_fast


def test_device_index_reaches_the_device_choice(fake_data, tmp_path, monkeypatch):
    import cnnbench.run.build as build_module

    asked = []
    real = build_module.resolve_device

    def spy(kind, index=None):
        asked.append((kind, index))
        return real(kind, index)

    monkeypatch.setattr(build_module, "resolve_device", spy)
    summary = train(compose_fast(fake_data, "device.index=2", "trainer.limit_train_batches=1",
                                 "trainer.limit_eval_batches=1"), tmp_path)
    assert summary["status"] == "completed"
    assert asked == [("cpu", 2)]


def test_deterministic_kernels_are_set_both_ways_in_one_process() -> None:
    """seed_everything skips torch.use_deterministic_algorithms when nothing changes (the call imports
    torch._inductor); an in-process run after a deterministic one must still get the fast kernels back."""
    from cnnbench.run.build import seed_everything

    try:
        seed_everything(0, True)
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(0, False)
        assert not torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False, warn_only=True)
        seed_everything(0, False)
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
