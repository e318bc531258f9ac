"""torch.compile for the training steps, with a compile cache that outlives the process.

Compiling costs far more than it saves in one short CPU run (Inductor writes and builds C++ for every
graph), but Inductor keeps what it built on disk: the next run of the same recipe, and every job of a
sweep after the first, load the compiled graphs instead of building them. Two things make that work:

* one stable cache folder: ``$TORCHINDUCTOR_CACHE_DIR`` when set, else ``~/.cache/cnnbench/inductor``
  (``$XDG_CACHE_HOME`` respected), instead of Inductor's per-user folder under ``/tmp``, which a reboot
  or a tmp cleaner empties;
* one graph per run: only training batches of the run's batch size go through the compiled module. The
  epoch's last, smaller batch and the evaluation run eagerly, on the same parameters, so neither a
  second batch size (which would recompile with dynamic shapes) nor eval mode (another graph) costs a
  compilation.

On the CPU, Inductor needs a working C++ compiler (:func:`cpp_compiler`): without one,
``device.compile=true`` is refused before training, instead of a run that fails at its first step.
``device.compile=auto`` (device=fast) leaves compilation off: measured, it made no book network faster
(:func:`wants_compile`).
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from ..config import cache_root
from ..errors import ConfigError

logger = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

def wants_compile(option: bool | str) -> bool:
    """``device.compile``: true or false as given; ``auto`` (device=fast) leaves torch.compile off.

    auto compiled the CPU training of networks of 50 MFLOP per image or more until it was measured against
    eager training (2-core Xeon with AMX, torch 2.14.1, bf16 autocast and channels-last as device=fast picks
    them, 2 threads, compile_for_training on a warm Inductor cache, eager and compiled steps in alternating
    blocks in one process, medians): compiled / eager step time was VGG-11 at 224 px 2.20, GoogLeNet at 96
    1.92 (1.87 on 1 thread), NiN at 224 1.40, AlexNet at 224 1.13, DenseNet at 96 1.03, ResNet-18 at 96
    1.02. No book network trained faster compiled, and the LeNets were measured no faster before. On CUDA
    it was never measured. ``device.compile=true`` compiles (checked first: :func:`check_compiler`).
    """
    return option is True


def check_compiler(device: torch.device) -> None:
    """``device.compile=true`` on the CPU needs Inductor's C++ compiler: refuse it before the run without one."""
    if device.type == "cpu" and cpp_compiler() is None:
        raise ConfigError(f"device.compile=true needs a working C++ compiler on the CPU ({_compiler_wanted()}"
                          " did not run): install one, set CXX to one, or use device.compile=false")


def _compiler_wanted() -> str:
    """The compiler command Inductor uses on the CPU: ``$CXX``, else g++ (clang++ on macOS, cl on Windows);
    as ``torch._inductor.config.cpp.cxx`` and ``cpp_builder.get_cpp_compiler`` choose it."""
    default = "cl" if sys.platform == "win32" else "clang++" if sys.platform == "darwin" else "g++"
    return os.environ.get("CXX", default)


@functools.cache
def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would build CPU kernels with, when it runs (``--version``, Inductor's own
    check; on Windows, found on PATH); None without one. Checked here rather than by Inductor's
    ``get_cpp_compiler``, whose import costs 2.3 s (measured on 2 cores; this costs 2 ms). Once per process."""
    wanted = _compiler_wanted()
    if sys.platform == "win32":
        return shutil.which(wanted)
    command = shlex.split(wanted)
    if not command or shutil.which(command[0]) is None:
        return None
    try:
        subprocess.run([*command, "--version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return wanted


def compile_cache_dir() -> Path:
    """The Inductor cache folder runs share: ``$TORCHINDUCTOR_CACHE_DIR``, else under ~/.cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return cache_root() / "inductor"


def use_compile_cache() -> Path:
    """Point Inductor at :func:`compile_cache_dir` (it reads the variable whenever it opens its cache)."""
    path = compile_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(path)
    return path


class CompiledSteps(nn.Module):
    """``module`` compiled for training batches of ``batch_size`` examples; eager for anything else.

    Wraps (and trains) the same parameters: ``self.module`` is what the optimizer and the checkpoint see.
    """

    def __init__(self, module: nn.Module, batch_size: int, dynamic_threads: bool = False) -> None:
        super().__init__()
        self.module = module
        self.batch_size = int(batch_size)
        options = {"cpp.dynamic_threads": True} if dynamic_threads else None
        # Kept out of the module tree: it holds ``module`` too, and must not register it a second time.
        object.__setattr__(self, "compiled", torch.compile(module, dynamic=False, options=options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == self.batch_size and torch.is_grad_enabled():
            return self.compiled(x)
        return self.module(x)


def compile_for_training(model: nn.Module, local_batch: int, dynamic_threads: bool = False) -> CompiledSteps:
    """``model`` with its full-size training steps compiled, using the shared cache folder. ``dynamic_threads``:
    the generated C++ loops ask OpenMP for the thread count each call (the count follows the load,
    cnnbench.speed.load) instead of keeping the count at compile time."""
    cache = use_compile_cache()
    logger.debug("torch.compile: training steps of %d examples; compile cache %s", local_batch, cache)
    return CompiledSteps(model, local_batch, dynamic_threads)
