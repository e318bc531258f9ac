"""Errors that carry one clear sentence for the user; the CLI prints them without a traceback."""

from __future__ import annotations

from pathlib import Path


class CnnbenchError(Exception):
    """Base class: a problem the user can fix (bad config, missing data, unusable checkpoint)."""


class ConfigError(CnnbenchError, ValueError):
    """A configuration value is invalid; raised before any training starts."""


class DataError(CnnbenchError):
    """Dataset files are missing, truncated or corrupt."""


class CheckpointError(CnnbenchError):
    """A checkpoint cannot be used (corrupt, incompatible, missing)."""


class RunFolderInUse(CnnbenchError):
    """Another live process holds the run folder's lock (:mod:`cnnbench.runfolder.lock`)."""


class ResumeRefused(CnnbenchError):
    """The checkpoint to resume was written with settings that change what its finished epochs mean."""


class RunFileWriteError(CnnbenchError):
    """A run file could not be written (a full disk, a quota, a read-only mount); names the file."""

    def __init__(self, path: Path, os_error: OSError) -> None:
        self.path, self.os_error = Path(path), os_error
        reason = os_error.strerror or str(os_error) or type(os_error).__name__
        code = f" (errno {os_error.errno})" if os_error.errno else ""
        super().__init__(f"cannot write {self.path}: {reason}{code}")


class RunFolderError(CnnbenchError):
    """A run folder to read (eval, predict, export) is missing or is not a cnnbench run."""


class ExportError(CnnbenchError):
    """An exported model could not be written or does not reproduce PyTorch's outputs."""


class TrainingDiverged(CnnbenchError):
    """The training loss became NaN, infinite or larger than ``trainer.divergence_loss``."""

    def __init__(self, step: int, epoch: float, loss: float, last_finite_loss: float | None, lr: float) -> None:
        self.step, self.epoch, self.loss, self.last_finite_loss, self.lr = step, epoch, loss, last_finite_loss, lr
        last = "none" if last_finite_loss is None else f"{last_finite_loss:.4g}"
        super().__init__(
            f"training diverged: the loss was {loss:.4g} at step {step} (epoch {epoch:.2f}); "
            f"last good loss {last}. Try a lower learning rate than {lr:g} "
            "(optimizer.lr=...) or gradient clipping (trainer.grad_clip_norm=1.0)."
        )


def one_line(message: str) -> str:
    """A multi-line (Hydra) message as one line: "Could not find 'model/x'. Available options in 'model': a, b"."""
    text = message.split("Config search path:")[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return message.strip()
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    label, options = (rest[0], rest[1:]) if rest[0].endswith(":") else ("", rest)
    return f"{head}. {label} {', '.join(options)}".replace(".  ", ". ").strip()
