"""Errors that carry one clear sentence for the user; the CLI prints them without a traceback."""

from __future__ import annotations


class CnnbenchError(Exception):
    """Base class: a problem the user can fix (bad config, missing data, unusable checkpoint)."""


class ConfigError(CnnbenchError, ValueError):
    """A configuration value is invalid; raised before any training starts."""


class DataError(CnnbenchError):
    """Dataset files are missing, truncated or corrupt."""


class CheckpointError(CnnbenchError):
    """A checkpoint cannot be used (corrupt, incompatible, missing)."""


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
