"""torch.compile's wrapper and cache folder (no real compilation here: see tests/speed/test_settings.py's slow test)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import cnnbench.speed.compiling as compiling
from cnnbench.errors import ConfigError
from cnnbench.run.build import local_batch
from cnnbench.run.distributed import DistContext
from tests.helpers import compose_fast


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


def test_auto_leaves_compile_off_where_it_was_measured_no_faster():
    """device=fast's ``auto`` compiles nothing (no book network trained faster compiled on the CPU; CUDA not
    measured); an explicit setting wins."""
    assert compiling.wants_compile("auto") is False
    assert compiling.wants_compile(True) is True and compiling.wants_compile(False) is False


def test_device_fast_means_compile_auto():
    from cnnbench.config import compose_config

    assert compose_config(["device=fast"]).device.compile == "auto"
    assert compose_config([]).device.compile is False


# ------------------------------------------------------------------------- no C++ compiler (Inductor's)


def test_compile_true_without_a_cpp_compiler_is_refused(monkeypatch):
    monkeypatch.setattr(compiling, "cpp_compiler", lambda: None)
    with pytest.raises(ConfigError, match=r"^device.compile=true needs a working C\+\+ compiler on the CPU"):
        compiling.check_compiler(torch.device("cpu"))
    compiling.check_compiler(torch.device("cuda"))  # Triton's, not this check: unmeasured here


def test_compile_true_without_a_cpp_compiler_fails_the_run_before_its_first_step(monkeypatch, fake_data, tmp_path):
    """One sentence in the summary, no training step taken (the error comes from the config's checks)."""
    from cnnbench.run.train import train

    monkeypatch.setattr(compiling, "cpp_compiler", lambda: None)
    run_dir = tmp_path / "run"
    summary = train(compose_fast(fake_data, "device.compile=true", "trainer.epochs=1"), run_dir)
    assert summary["status"] == "failed"
    assert "device.compile=true needs a working C++ compiler on the CPU" in summary["error"]
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    assert not [r for r in records if r.get("kind") == "train"]


@pytest.mark.skipif(sys.platform == "win32", reason="Windows: found on PATH, not run")
def test_the_compiler_lookup_is_inductors_cxx_run_with_version(monkeypatch, tmp_path):
    """$CXX (a command Inductor splits as a shell would), else g++/clang++; it must run ``--version``."""
    look = compiling.cpp_compiler.__wrapped__  # uncached: once per process otherwise
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    assert look() is None
    monkeypatch.setenv("CXX", "")
    assert look() is None
    broken = tmp_path / "broken-g++"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    assert look() is None  # found, but it does not run
    works = f"{sys.executable} -E"  # any program that answers --version stands for a compiler here
    monkeypatch.setenv("CXX", works)
    assert look() == works
