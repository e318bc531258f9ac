"""The memory of a training step (:mod:`cnnbench.run.memory`): a step that cannot fit refused before training, out of
memory during training as one line, and the estimate the same on the CPU and the meta device."""

from __future__ import annotations

import pytest
import torch

from cnnbench.cli import main
from cnnbench.config import compose_config
from cnnbench.data.sources import settle_dataset
from cnnbench.run.memory import estimate_step_memory
from cnnbench.run.spec import run_spec
from cnnbench.run.train import train
from tests.helpers import cfg_for, fast_overrides


def test_a_step_that_cannot_fit_is_refused_before_training(fake_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("cnnbench.run.memory._cpu_available", lambda: (600 * 2**20, "available RAM"))
    overrides = fast_overrides(fake_data, "model=resnet18", "trainer.batch_size=256")
    assert main(["train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and not (tmp_path / "run").exists()
    assert err.startswith("cnnbench train: error: a training step of resnet18 at batch size 256, 96x96 inputs, fp32 "
                          "precision needs about 1.3")
    suggested = int(err.split("try trainer.batch_size=")[1].split()[0])
    cfg = compose_config(overrides)
    need = estimate_step_memory(run_spec(cfg, settle_dataset(cfg)))
    assert 8 <= suggested < 256 and need.total(suggested) <= 600 * 2**20
    summary = train(cfg, tmp_path / "direct")  # train() itself refuses too, before any step
    assert summary["status"] == "failed" and summary["steps"] == 0 and "NotEnoughMemory" in summary["error"]
    # no spec exists yet (its check refused the run): the summary says what was asked, from the raw config
    assert (summary["model"], summary["resize"], summary["epochs"], summary["seed"], summary["objective"]) == (
        "resnet18", 96, cfg.trainer.epochs, cfg.trainer.seed, "val/acc")


def test_out_of_memory_during_training_fails_with_one_line(fake_data, tmp_path, monkeypatch):
    """A real allocator failure (256 TiB asked of the CPU allocator) at the third training step."""
    from cnnbench.models.configured import Network

    real = Network.build
    steps = []

    def with_huge_step(network):
        model = real(network)

        def hook(module, _inputs):
            if module.training:
                steps.append(1)
                if len(steps) == 3:
                    torch.empty(1 << 48, dtype=torch.uint8)

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(Network, "build", with_huge_step)
    summary = train(cfg_for(fake_data, "trainer.epochs=1"), tmp_path)
    assert summary["status"] == "failed" and len(steps) == 3 and summary["epochs_completed"] == 0
    assert summary["error"] == (
        "NotEnoughMemory: out of memory with lenet at batch size 32, 28x28 inputs, fp32 precision (can't allocate "
        "memory: you tried to allocate 281474976710656 bytes); the largest batch that fits is about 16: try "
        "trainer.batch_size=16 (or a smaller dataset.resize)")


@pytest.mark.parametrize("model", ["lenet_bn", "resnet18"])
def test_the_memory_estimate_is_the_same_on_the_cpu_and_the_meta_device_and_draws_no_random_numbers(
        fake_data, monkeypatch, model):
    """Small networks run the estimate's one image on the CPU (the meta device's first forward costs a
    second of imports): same bytes as on the meta device, and the run's random generator untouched."""
    cfg = cfg_for(fake_data, f"model={model}")
    spec = run_spec(cfg, settle_dataset(cfg))
    torch.manual_seed(0)
    on_cpu = estimate_step_memory(spec)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)  # nothing drawn by the estimate
    monkeypatch.setattr("cnnbench.run.memory.REAL_FORWARD_MAX_BYTES", 0)  # every network on the meta device
    assert estimate_step_memory(spec) == on_cpu
