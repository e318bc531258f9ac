"""Shared fixtures: small MNIST-format IDX files written by the tests themselves."""

from __future__ import annotations

import gzip
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

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


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 0x0803 for 3-D images, 0x0801 for 1-D labels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = 0x0800 | array.ndim
    with path.open("wb") as f:
        f.write(struct.pack(f">{array.ndim + 1}I", magic, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images a small network can learn: a bright bar whose row depends on the class, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.int64)
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 230
    return images.astype(np.uint8)


def write_fake_dataset(root: Path, n_train: int = 256, n_test: int = 128, folder: str = "FashionMNIST",
                       seed: int = 0) -> Path:
    """Four IDX files in torchvision's layout under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_idx(raw / f"{split}-images-idx3-ubyte", make_images(labels, rng))
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


def gzip_dataset(source: Path, target: Path, folder: str = "FashionMNIST", keep_plain: tuple[str, ...] = ()) -> Path:
    """A copy of ``source``'s four IDX files under ``target`` in torchvision's layout, gzipped
    (``NAME.gz``) except those named in ``keep_plain``; returns ``target``."""
    src, dst = source / folder / "raw", target / folder / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*-ubyte")):
        data = path.read_bytes()
        if path.name in keep_plain:
            (dst / path.name).write_bytes(data)
        else:
            (dst / f"{path.name}.gz").write_bytes(gzip.compress(data, mtime=0))
    return target


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


def real_data_root() -> Path | None:
    """Full Fashion-MNIST for the realdata tests: $CNNBENCH_DATA or ../shared/data."""
    from cnnbench.data.idx import idx_path

    for candidate in (os.environ.get("CNNBENCH_DATA"), SHARED_DATA):
        if candidate and idx_path(Path(candidate) / "FashionMNIST" / "raw", "train-images-idx3-ubyte"):  # plain or .gz
            return Path(candidate)
    return None


def fast_overrides(data_root: Path | str, *extra: str) -> list[str]:
    """The settings most tests start from: the test's own small data, no download, the CPU, and a fixed
    memory layout and ATen's convolution backward (``device.channels_last=auto`` would pick NCHW or NHWC
    by timing, and ``device.conv_weight_grad=auto`` each small convolution's weight-gradient layout, so
    the code path under test would change from run to run). Tests about autotuning override them."""
    return [f"dataset.root={data_root}", "dataset.download=false", "device=cpu", "device.channels_last=false",
            "device.conv_weight_grad=native", "trainer.progress_bar=false", *extra]


def compose_fast(data_root: Path | str, *extra: str):
    """``compose_config`` of :func:`fast_overrides`."""
    from cnnbench.config import compose_config

    return compose_config(fast_overrides(data_root, *extra))


def stop_process(proc: subprocess.Popen) -> None:
    """Kill a test's child process (and its process group) if it is still running: a failed assertion
    must not leave a training process behind."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL) if _own_group(proc) else proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)


def _own_group(proc: subprocess.Popen) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def cli(*args: str) -> list[str]:
    """argv that runs the cnnbench command line in a subprocess with this interpreter."""
    return [sys.executable, "-m", "cnnbench", *args]


def train_run_folder(run_dir: Path, *overrides: str) -> Path:
    """A finished run folder as ``cnnbench train`` leaves it (the .hydra record included), trained in
    this process on the packaged Fashion-MNIST sample: what eval, predict and export read."""
    from omegaconf import OmegaConf

    from cnnbench.run.train import train

    cfg = compose_fast("/nonexistent", "dataset=fashion_mnist_mini", *overrides)
    summary = train(cfg, run_dir)
    assert summary["status"] == "completed", summary["error"]
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir


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


WANDB_BLOCK = 32768  # the .wandb file's block size (LevelDB's log format, after a 7-byte header)


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``run-ID.wandb`` file."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(raw):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_wandb_records(run_dir: Path, timeout_s: float = 60.0) -> list:
    """The records of the run folder's one offline W&B run, once its file holds the run's ``exit`` record: W&B's
    service may still be writing the file when ``finish()`` returns on a loaded machine (seen: no ``run``
    record yet), so this waits for the file's own end, not for a time."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) <= 1, files
        records = wandb_records(files[0]) if files else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            assert files, list(run_dir.rglob("*"))
            return records
        time.sleep(0.1)
