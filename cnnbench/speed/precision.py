"""Numeric precision of a run: autocast to bf16/fp16 around the forward pass, and fp16's gradient scaler."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("fp32", *AMP_DTYPES)


@dataclass
class Precision:
    """Autocast settings and the fp16 gradient scaler."""

    device: torch.device
    name: str = "fp32"
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, name: str, device: torch.device) -> Precision:
        if name not in PRECISIONS:
            raise ConfigError(f"unknown device.precision {name!r}; use fp32, bf16 or fp16")
        if name == "fp16" and device.type != "cuda":
            raise ConfigError("device.precision=fp16 needs CUDA; on the CPU use bf16 or fp32")
        scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None
        return cls(device, name, scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.name])
