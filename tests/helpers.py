"""Helpers the tests share, in one place: the small data they write (IDX files, picture folders), the
settings most runs start from, command lines and child processes, and probes of a run from inside. Test
modules import from here (and get fixtures from conftest.py), never from one another."""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

if TYPE_CHECKING:
    from cnnbench.data.idx import Split

# ------------------------------------------------------------- data files, settings, command lines

REPO = Path(__file__).resolve().parents[1]  # the checkout: tests/ sits at its top
SHARED_DATA = REPO.parent / "shared" / "data"


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
    the code path under test would change from run to run), and torch's thread count fixed (``device.num_threads=auto``
    follows the machine's load, and the count changes the last bits of the numbers that tests compare between
    runs). Tests about autotuning or the thread count override them."""
    return [f"dataset.root={data_root}", "dataset.download=false", "device=cpu", "device.channels_last=false",
            "device.conv_weight_grad=native", "device.num_threads=null", "trainer.progress_bar=false", *extra]


def compose_fast(data_root: Path | str, *extra: str):
    """``compose_config`` of :func:`fast_overrides`."""
    from cnnbench.config import compose_config

    return compose_config(fast_overrides(data_root, *extra))


def quick(fake_data, *overrides):
    """A deterministic LeNet of batch 32 at rate 0.5 on the tests' small data: the callbacks' and the loss's runs."""
    return compose_fast(fake_data, "model=lenet", "trainer.batch_size=32", "trainer.deterministic=true",
                        "optimizer.lr=0.5", *overrides)


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

# --------------------------------------------------------------- a run held inside a step, weights


# Momentum SGD with a learning-rate schedule: a resume that dropped the optimizer's momentum buffers or
# the scheduler's position would end with other weights (plain SGD at a constant rate would not notice).
STATEFUL_OPTIMIZER = ["optimizer=sgd_momentum", "optimizer.lr=0.05"]


def cfg_for(data_root, *overrides):
    return compose_fast(data_root, "trainer.batch_size=32", "trainer.deterministic=true", *overrides)


def wait_until(condition: Callable[[], bool], what: str, procs: Sequence[subprocess.Popen] = (),
               timeout: float = 300) -> None:
    """Poll ``condition`` (a look at a file) until it holds. A deadline far beyond any normal wait and
    the end of one of ``procs`` turn a condition that never comes into a failure naming ``what``, not a
    hang; how long the wait takes decides nothing."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = [p.returncode for p in procs if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            if condition():  # it came just before the process ended
                return
            raise AssertionError(f"{what}: not seen ({f'exit codes {ended}' if ended else f'{timeout} s passed'})")
        time.sleep(0.02)


def text_of(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# A `cnnbench` command line (``python held_step.py ARGS``) whose training holds still inside one step
# until the test lets it go: the first training forward pass of the first convolution (one input channel)
# after $HOLD_WATCH contains $HOLD_MARK creates $HOLD_GATE/held-<pid>, then waits for $HOLD_GATE/release.
# With $HOLD_RANK, only the worker of that global rank holds (torchrun). The wait ends by itself after
# 300 s, so a test that died leaves no process waiting for ever.
HELD_STEP = """
import os, sys, time
from pathlib import Path
import torch
gate, watch, mark = Path(os.environ["HOLD_GATE"]), Path(os.environ["HOLD_WATCH"]), os.environ["HOLD_MARK"]
rank = os.environ.get("HOLD_RANK")
held = False
def hold(module, args):
    global held
    if held or not (isinstance(module, torch.nn.Conv2d) and module.in_channels == 1 and module.training):
        return
    if (rank is not None and os.environ.get("RANK") != rank) or not (watch.exists() and mark in watch.read_text()):
        return
    held = True
    (gate / f"held-{os.getpid()}").touch()
    deadline = time.monotonic() + 300
    while not (gate / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
torch.nn.modules.module.register_module_forward_pre_hook(hold)
from cnnbench.cli import main
sys.exit(main(sys.argv[1:]))
"""


class HeldStep:
    """A handshake on files with a training process, instead of a sleep that guesses where it is: the
    process runs ``argv(...)`` with ``env`` (HELD_STEP), the test waits until it holds inside a step
    (``wait_held``: its pid), signals it, then lets it go (``release``). A step holds once per process
    (a sweep's jobs share one)."""

    def __init__(self, gate: Path, watch: Path, mark: str, rank: int | None = None) -> None:
        gate.mkdir(parents=True)
        self.gate, self.script = gate, gate / "held_step.py"
        self.script.write_text(HELD_STEP)
        self.env = {**os.environ, "HOLD_GATE": str(gate), "HOLD_WATCH": str(watch), "HOLD_MARK": mark,
                    **({"HOLD_RANK": str(rank)} if rank is not None else {})}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.script), *args]

    def wait_held(self, *procs: subprocess.Popen, timeout: float = 300) -> int:
        wait_until(lambda: any(self.gate.glob("held-*")), "a training step held", procs, timeout)
        (held,) = self.gate.glob("held-*")
        return int(held.name.removeprefix("held-"))

    def release(self) -> None:
        (self.gate / "release").touch()


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), k

# ----------------------------------------------------------------------------------------- servers


def start_tensorboard(logdir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """A TensorBoard server on a port the OS picks when it binds (no window for another process to take
    a port we chose first); returns it and its base URL, read from its serving message."""
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", "0",
                           "--host", "127.0.0.1", "--reload_interval", "1"],
                          stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.time() + 90
    while time.time() < deadline and tb.poll() is None:
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/", log.read_text())
        if found:
            return tb, found.group(1)
        time.sleep(0.2)
    stop_process(tb)
    raise AssertionError(f"TensorBoard did not start: {log.read_text()[-2000:]}")

# --------------------------------------------------------------------- what a run's steps ran with


@dataclass
class Probe:
    """What a run's training steps really ran with, seen from inside by global hooks."""

    losses: list[float] = field(default_factory=list)  # the logged running mean after each of 4 steps
    summary: dict = field(default_factory=dict)
    conv_input_channels_last: set[bool] = field(default_factory=set)  # the 6-channel conv's (B, 6, H, W) input
    conv_weight_channels_last: set[bool] = field(default_factory=set)
    conv_output_dtype: set[torch.dtype] = field(default_factory=set)  # under autocast: bf16
    param_dtype: set[torch.dtype] = field(default_factory=set)  # master weights stay fp32
    threads: set[int] = field(default_factory=set)  # torch.get_num_threads() during the forward pass
    fused: set[object] = field(default_factory=set)  # optimizer.defaults["fused"] at each step


def is_channels_last(t: torch.Tensor) -> bool:
    """NHWC but not NCHW (a 1-channel tensor is both, so only tensors with C > 1 tell them apart)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def first_losses(data, tmp_path, *overrides: str) -> Probe:
    """Train LeNet-BN for 4 steps with ``overrides`` and record what the steps ran with."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from cnnbench.run.train import train

    probe = Probe()

    def on_forward(module: nn.Module, inputs, output) -> None:
        if isinstance(module, nn.Conv2d) and module.in_channels == 6 and module.training:
            probe.conv_input_channels_last.add(is_channels_last(inputs[0]))
            probe.conv_weight_channels_last.add(is_channels_last(module.weight))
            probe.conv_output_dtype.add(output.dtype)
            probe.param_dtype.add(module.weight.dtype)
            probe.threads.add(torch.get_num_threads())

    def on_step(optimizer, args, kwargs) -> None:
        probe.fused.add(optimizer.defaults.get("fused"))

    cfg = compose_fast(data, "model=lenet_bn", "trainer.batch_size=32", "trainer.epochs=1",
                       "trainer.limit_train_batches=4", "trainer.logs_per_epoch=4", "trainer.deterministic=false",
                       *overrides)
    hooks = [nn.modules.module.register_module_forward_hook(on_forward),
             register_optimizer_step_pre_hook(on_step)]
    try:
        probe.summary = train(cfg, tmp_path)
    finally:
        for h in hooks:
            h.remove()
    assert probe.summary["status"] == "completed", probe.summary["error"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    probe.losses = [r["train/loss"] for r in records if r["kind"] == "train"]
    return probe

# --------------------------------------------------------------------------------- picture folders


CLASSES = ("cat", "dog", "frog")


def picture(label: int, rng: np.random.Generator, side: int = 12, colour: bool = True) -> np.ndarray:
    """(side, side, 3) uint8: a bright band whose row depends on the class, plus noise; grey when not colour."""
    a = rng.integers(0, 50, (side, side, 3), dtype=np.uint8)
    a[1 + 3 * label: 3 + 3 * label] = (220, 120 + 40 * label, 40) if colour else 200
    if not colour:
        a[..., 1] = a[..., 2] = a[..., 0]
    return a


def make_folder(root: Path, n_train: int = 8, n_test: int = 4, colour: bool = True, ext: str = ".png",
                splits: tuple[str, ...] = ("train", "test"), classes: tuple[str, ...] = CLASSES,
                side: int = 12, seed: int = 0) -> Path:
    """ROOT/<split>/<class>/<i><ext>; grey pictures saved as mode L."""
    rng = np.random.default_rng(seed)
    for split in splits:
        n = n_train if split == "train" else n_test
        for label, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = picture(label, rng, side, colour)
                Image.fromarray(a if colour else a[..., 0]).save(d / f"{i:03d}{ext}")
    return root

# ----------------------------------------------------------------------------------- config groups


GROUPS = ["model", "dataset", "optimizer", "scheduler", "device", "augment", "experiment"]


def options(group: str) -> list[str]:
    """The options of a config group under conf/ (``model`` -> ``alexnet``, ...)."""
    from cnnbench.config import config_dir

    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))

# ------------------------------------------------------------------------------- a dataset section


def dataset_cfg(root=None, name="fashion_mnist", download=False):
    """The composed ``dataset`` section of option ``name``, with its root and download switch set."""
    from omegaconf import OmegaConf

    from cnnbench.config import compose_config

    cfg = compose_config([f"dataset={name}"]).dataset
    OmegaConf.update(cfg, "root", None if root is None else str(root))
    OmegaConf.update(cfg, "download", download)
    return cfg

# ---------------------------------------------------------------------------------- a random split


def random_split(n: int = 64, seed: int = 0) -> Split:
    """``n`` random 28x28 uint8 images, labels 0-9 in turn."""
    from cnnbench.data.idx import Split

    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8), torch.arange(n) % 10)

# ------------------------------------------------------------------------------ damaged data files


def corrupt(root: Path, name: str, mutate) -> Path:
    """Replace the bytes of one IDX file under ``root`` by ``mutate(bytes)``; returns its path."""
    path = root / "FashionMNIST" / "raw" / name
    path.write_bytes(mutate(path.read_bytes()))
    return path

# --------------------------------------------------------------------------- run folders to resume


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# The resume tests' settings: momentum SGD with a step schedule, whose state a resume must carry over.
BASE = ["optimizer=sgd_momentum", "optimizer.lr=0.05", "scheduler=step", "scheduler.step_epochs=1"]

# ------------------------------------------------------------------------------ a network's layers


def layers(model: nn.Module) -> list[str]:
    """Every leaf layer with its settings and shapes (``Conv2d(6, 16, kernel_size=(5, 5), ...)``), in order."""
    return [f"{type(m).__name__}({m.extra_repr()})" for m in model.modules() if not list(m.children())]


def types(model: nn.Module) -> list[type]:
    """The type of every leaf layer, in order."""
    return [type(m) for m in model.modules() if not list(m.children())]


def meta(name: str, **kw) -> nn.Module:
    """``build_model(name, **kw)`` on the meta device."""
    from cnnbench.models import build_model

    with torch.device("meta"):  # shapes only: VGG's 129M parameters take no memory
        return build_model(name, **kw)


# --------------------------------------------------------------------------------------- the tests' map


def own_tests(module: str) -> list[str]:
    """The test files of ``cnnbench/MODULE`` (``data/folder.py``) at its mirrored path: ``tests/data/test_folder.py``
    and any ``test_folder_TOPIC.py`` beside it that is not another module's own file (``test_bench_accuracy.py``
    is ``bench_accuracy.py``'s, not ``bench.py``'s)."""
    rel = Path(module)
    folder, package = REPO / "tests" / rel.parent, REPO / "cnnbench" / rel.parent
    others = {f"test_{p.stem}" for p in package.glob("*.py") if p.stem != rel.stem}
    return sorted(p.relative_to(REPO).as_posix() for p in folder.glob("test_*.py")
                  if p.stem == f"test_{rel.stem}" or (p.stem.startswith(f"test_{rel.stem}_") and p.stem not in others))


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


# ------------------------------------------------------------------------- run folders for cnnbench report


FAKE_RUN_EPOCHS = 3  # epochs of every fake_run


@functools.cache
def default_config() -> str:
    """The default resolved config as YAML (composed once: composing takes ~0.2 s)."""
    from omegaconf import OmegaConf

    from cnnbench.config import compose_config

    return OmegaConf.to_yaml(compose_config([f"trainer.epochs={FAKE_RUN_EPOCHS}"]))


def resolved_config(overrides: list[str]) -> str:
    """``.hydra/config.yaml`` of a run started with ``overrides``: the default config with each key=value
    set, and a group choice (model=lenet_bn) standing for its option's name only."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(default_config())
    for item in overrides:
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key if "." in key else f"{key}.name", yaml.safe_load(value))
    return OmegaConf.to_yaml(cfg)


def fake_run(folder: Path, overrides: list[str], test_acc: float | None, *, status: str = "completed",
             error: str | None = None, examples_per_sec: float = 5000.0, summary: bool = True,
             **fields: object) -> Path:
    """A run folder like ``cnnbench train`` leaves: .hydra files, metrics.jsonl and summary.json (``fields``
    replace its values: ``params=``, ``wall_time_s=``, ...)."""
    model = next((o.split("=", 1)[1] for o in overrides if o.startswith("model=")), "lenet")
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text(resolved_config(overrides))
    lines = []
    for epoch in range(1, FAKE_RUN_EPOCHS + 1):
        lines.append({"kind": "train", "step": epoch * 10 - 5, "epoch": epoch - 0.5, "train/loss": 1.0,
                      "train/acc": 0.5, "lr": 0.1})
        if test_acc is not None:
            lines.append({"kind": "epoch", "step": epoch * 10, "epoch": epoch, "train/loss": 1.0 / epoch,
                          "train/acc": 0.6 + 0.01 * epoch, "test/acc": test_acc - 0.05 * (FAKE_RUN_EPOCHS - epoch)})
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "epoch", "step": 3'  # cut-off line
    (folder / "metrics.jsonl").write_text(text)
    if summary:
        (folder / "summary.json").write_text(json.dumps({
            "status": status, "error": error, "traceback": None, "model": model, "resize": 28,
            "epochs": FAKE_RUN_EPOCHS, "epochs_completed": FAKE_RUN_EPOCHS if test_acc is not None else 0,
            "train/loss": 0.3123456 if test_acc is not None else None,
            "train/acc": 0.8876543 if test_acc is not None else None,
            "test/acc": test_acc, "best/test_acc": test_acc, "wall_time_s": 12.345,
            "examples_per_sec": examples_per_sec, "params": 61706, "flops_per_image": 429_000,
            "device": "cpu", "seed": 0, "overrides": overrides, **fields,
        }))
    return folder


def built(cfg, run_dir):
    """``build_run`` of a composed config: checked first (``validate_config``), as ``train`` does."""
    from cnnbench.run.build import build_run
    from cnnbench.run.validate import validate_config

    return build_run(validate_config(cfg), run_dir)
