"""torch.compile's wrapper and cache folder (no real compilation here: see test_speed's slow test)."""

from __future__ import annotations

import torch
from torch import nn

import cnnbench.speed.compiling as compiling
from cnnbench.run.build import local_batch
from cnnbench.run.distributed import DistContext


def test_the_cache_folder_is_stable_and_the_users_choice_wins(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compiling.compile_cache_dir() == tmp_path / "home" / ".cache" / "cnnbench" / "inductor"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiling.compile_cache_dir() == tmp_path / "xdg" / "cnnbench" / "inductor"
    path = compiling.use_compile_cache()
    assert path.is_dir() and torch._inductor.runtime.cache_dir_utils.cache_dir() == str(path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling.use_compile_cache() == tmp_path / "mine"


def test_only_full_training_batches_take_the_compiled_path(monkeypatch):
    calls = []

    def fake_compile(module, **kwargs):
        def compiled(x):
            calls.append(x.shape[0])
            return module(x)
        return compiled

    monkeypatch.setattr(compiling.torch, "compile", fake_compile)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    wrapped = compiling.CompiledSteps(net, batch_size=8)
    assert list(wrapped.parameters()) == list(net.parameters())  # registered once: the optimizer sees each once
    assert set(wrapped.state_dict()) == {f"module.{k}" for k in net.state_dict()}
    wrapped.train()
    wrapped(torch.randn(8, 4)).sum().backward()  # a full training batch: compiled
    wrapped(torch.randn(3, 4))  # the epoch's last, smaller batch: eager
    wrapped.eval()
    with torch.no_grad():
        wrapped(torch.randn(8, 4))  # evaluation: eager
    assert calls == [8]
    assert not net.training  # eval()/train() reach the wrapped module


def test_each_rank_compiles_for_its_share_of_the_batch():
    assert local_batch(256, DistContext()) == 256
    shares = [local_batch(10, DistContext(rank=r, world_size=4)) for r in range(4)]
    assert shares == [len(s) for s in torch.arange(10).tensor_split(4)] == [3, 3, 2, 2]


def test_auto_compiles_the_big_networks_on_the_cpu_only():
    import pytest

    from cnnbench.errors import ConfigError

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compiling.wants_compile("auto", cpu, 833_040)  # LeNet: no faster compiled
    assert compiling.wants_compile("auto", cpu, 637_315_072)  # ResNet-18 at 96: 3% a step
    assert not compiling.wants_compile("auto", cuda, 637_315_072)  # not measured on GPUs
    assert compiling.wants_compile(True, cpu, 0) and not compiling.wants_compile(False, cpu, 10**12)
    with pytest.raises(ConfigError, match="device.compile"):
        compiling.wants_compile("yes", cpu, 0)


def test_device_fast_means_compile_auto():
    from cnnbench.config import compose_config

    assert compose_config(["device=fast"]).device.compile == "auto"
    assert compose_config([]).device.compile is False
