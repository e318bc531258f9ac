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
