"""The plain-logs Hydra callback (:mod:`cnnbench.commands.plain_logs`): in the config, Alembic's set-up lines
dropped, Optuna's records through the standard handlers."""

from __future__ import annotations

import pytest

from cnnbench.config import compose_config


def test_the_plain_logs_callback_is_in_the_config():
    from hydra.utils import get_class

    from cnnbench.commands.plain_logs import PlainLogs

    cfg = compose_config(["hydra/sweeper=lr_search"], return_hydra_config=True)
    assert get_class(cfg.hydra.callbacks.plain_logs._target_) is PlainLogs


def test_plain_logs_drop_alembics_setup_lines(caplog):
    """The fast part of the callback: alembic (imported with Optuna's storage) logs no INFO set-up lines."""
    import logging

    from cnnbench.commands.plain_logs import PlainLogs

    try:
        PlainLogs().on_multirun_start(config=compose_config([], return_hydra_config=True))
        with caplog.at_level(logging.INFO):
            logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.x")
            logging.getLogger("alembic.runtime.plugins").warning("a real problem")
        assert [r.getMessage() for r in caplog.records] == ["a real problem"]
    finally:
        logging.getLogger("alembic").setLevel(logging.NOTSET)


@pytest.mark.slow  # importing Optuna alone takes over 2 CPU-seconds
def test_plain_logs_route_optunas_records_through_the_standard_handlers(caplog, capfd):
    """Optuna's own handler writes colorlog ANSI codes even into a file; after the callback its records
    reach the root logger's handlers (Hydra's plain format) and alembic's INFO chatter is dropped."""
    import logging

    optuna = pytest.importorskip("optuna")
    from cnnbench.commands.plain_logs import PlainLogs

    cfg = compose_config(["hydra/sweeper=lr_search"], return_hydra_config=True)
    try:
        PlainLogs().on_multirun_start(config=cfg)
        with caplog.at_level(logging.INFO):
            optuna.logging.get_logger("optuna.study").info("a new study")
            logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.x")
        assert [r.getMessage() for r in caplog.records] == ["a new study"]
        assert "\x1b[" not in capfd.readouterr().err
    finally:  # give Optuna its defaults back for the other tests of this process
        optuna.logging.disable_propagation()
        optuna.logging.enable_default_handler()
        logging.getLogger("alembic").setLevel(logging.NOTSET)
