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
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..config import cache_root
from ..errors import ConfigError

logger = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

# device.compile=auto (device=fast) compiles on the CPU when a network's forward pass costs at least this
# many FLOPs per image. Measured on 2 cores: LeNet and LeNet-BN (0.8 and 0.6 MFLOP) train no faster
# compiled, and even from a warm cache the compilation costs 7-10 CPU-seconds; ResNet-18 at 96 pixels
# (0.6 GFLOP) saves 3% of every step, paying back a cold compilation (49 CPU-seconds) within 1.5 epochs
# and a warm one (1.3 CPU-seconds) within 10 steps. On CUDA auto stays off: not measured here.
AUTO_MIN_FLOPS = 50e6


def wants_compile(option, device: torch.device, flops_per_image: int) -> bool:
    """``device.compile``: true, false, or auto (the measured rule above)."""
    if str(option) not in ("True", "False", "auto"):
        raise ConfigError(f"device.compile must be true, false or auto, got {option!r}")
    if str(option) != "auto":
        return bool(option)
    return device.type == "cpu" and flops_per_image >= AUTO_MIN_FLOPS


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

    def __init__(self, module: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.module = module
        self.batch_size = int(batch_size)
        # Kept out of the module tree: it holds ``module`` too, and must not register it a second time.
        object.__setattr__(self, "compiled", torch.compile(module, dynamic=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == self.batch_size and torch.is_grad_enabled():
            return self.compiled(x)
        return self.module(x)


def compile_for_training(model: nn.Module, local_batch: int) -> CompiledSteps:
    """``model`` with its full-size training steps compiled, using the shared cache folder."""
    cache = use_compile_cache()
    logger.info("torch.compile: training steps of %d examples; compile cache %s", local_batch, cache)
    return CompiledSteps(model, local_batch)
