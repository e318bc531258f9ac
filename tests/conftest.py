"""Shared fixtures: small MNIST-format IDX files written by the tests themselves, a trained run folder, and
each test's own caches. The helpers they use, and that test modules import, live in tests/helpers.py."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import train_run_folder, write_fake_dataset

# The fused CPU kernels (cnnbench.speed.cpu.fused) are built into a folder of this test session, which the
# commands the tests start inherit, not into the user's ~/.cache.
os.environ.setdefault("CNNBENCH_KERNEL_CACHE", tempfile.mkdtemp(prefix="cnnbench-test-kernels-"))
# The same for kept start-up timing decisions, for session fixtures (each test then gets its own folder).
os.environ.setdefault("CNNBENCH_AUTOTUNE_CACHE", tempfile.mkdtemp(prefix="cnnbench-test-autotune-"))


@pytest.fixture(autouse=True)
def _own_autotune_cache(monkeypatch, tmp_path_factory):
    """Each test its own folder of kept start-up timing decisions (cnnbench.speed.decisions), which the
    commands it starts inherit: not the user's ~/.cache, and no test reads a decision another one timed."""
    monkeypatch.setenv("CNNBENCH_AUTOTUNE_CACHE", str(tmp_path_factory.mktemp("autotune")))
    # Keep what a test times whatever the machine's load (a busy CI runner would otherwise leave decisions
    # unkept and a test that expects one read back would time again); tests/speed/test_decisions.py checks
    # the load rule itself with this unset.
    monkeypatch.setenv("CNNBENCH_AUTOTUNE_LOAD_TOLERANCE", "inf")


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Hand every test the root logger as it found it: Hydra's job logging (a run through ``main``)
    installs handlers on the stream of that test's capture, which a later test would write to closed."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> Path:
    """A small Fashion-MNIST look-alike (256 train, 128 test images)."""
    return write_fake_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def no_data_env(monkeypatch, tmp_path):
    """Run from an empty folder with no CNNBENCH_DATA, so no real data is found by accident."""
    monkeypatch.delenv("CNNBENCH_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """LeNet-BN after 50 steps on the packaged sample (6,000 real Fashion-MNIST images, 1,000 to test):
    about 60% test accuracy with some confident answers, and mistakes to show. Tests must not change
    its files (copy it first)."""
    return train_run_folder(tmp_path_factory.mktemp("runs") / "lenet_bn", "model=lenet_bn", "optimizer.lr=0.9",
                            "trainer.epochs=1", "trainer.batch_size=64", "trainer.limit_train_batches=50")


@pytest.fixture(scope="session")
def ema_run(trained_run, tmp_path_factory) -> Path:
    """``trained_run`` as a run with ``trainer.ema.decay`` would leave it, its two sets of weights built by
    hand so that they really differ: the EMA (what the run reported, evaluates and ships) holds the
    trained weights, the raw ``model`` entry freshly initialized ones that score at chance. A command
    that used the raw weights gives other answers."""
    import shutil

    import torch

    from cnnbench.evaluation.inference import read_run_config
    from cnnbench.models.configured import init_weights, model_from_config

    run = tmp_path_factory.mktemp("runs") / "lenet_bn_ema"
    shutil.copytree(trained_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    torch.manual_seed(1)
    untrained = model_from_config(read_run_config(run))
    init_weights(untrained, "xavier")
    # AveragedModel's state dict: the averaged network under "module.", and its count of averages
    state["ema"] = {**{f"module.{k}": v for k, v in state["model"].items()}, "n_averaged": torch.tensor(50)}
    state["model"] = untrained.state_dict()
    torch.save(state, run / "last.pt")
    return run
