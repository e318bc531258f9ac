"""Plain logs under Hydra's plugins: no colours, no set-up chatter (``hydra.callbacks.plain_logs`` in conf/train.yaml).

Hydra's Optuna sweeper (``hydra/sweeper=lr_search``) imports Optuna, whose logger writes through its own
colorlog handler: ANSI colour codes even into a file or a pipe, in a format unlike every other line. Its
import also imports alembic, which logs seven ``setup plugin alembic...`` INFO lines. This callback runs
when a sweep starts, before Hydra instantiates the sweeper (hydra/_internal/hydra.py: ``on_multirun_start``
comes first), and sends Optuna's records through the standard logging handlers instead (Hydra's plain
``[time][HYDRA] message`` lines) and alembic's below WARNING nowhere.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# Libraries a sweeper plugin imports whose INFO lines say nothing about the sweep.
CHATTY_LOGGERS = ("alembic",)


def plain_plugin_logging(config: DictConfig) -> None:
    """Quiet :data:`CHATTY_LOGGERS` and, when ``config``'s sweeper is Optuna's, route Optuna's log records
    through the standard handlers (no colorlog handler of its own)."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    if "optuna" in target.lower():
        import optuna

        optuna.logging.disable_default_handler()  # its colorlog.StreamHandler on stderr
        optuna.logging.enable_propagation()  # to the root logger's handlers: plain text, one format


class PlainLogs(Callback):
    """Hydra callback applying :func:`plain_plugin_logging` when a sweep starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        plain_plugin_logging(config)
