"""The config schema (:mod:`cnnbench.schema`): every option of every config group is typed by its section."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cnnbench.config import compose_config
from tests.helpers import GROUPS, options


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g not in ("model", "experiment")
                                          for o in options(g)])
def test_every_group_option_is_typed_by_its_schema(group, option):
    """Each option of a typed group composes to its schema's dataclass (cnnbench.schema), so a value of
    the wrong type or a key the schema lacks is refused when composed; the model group stays open (each
    family declares its own arguments)."""
    from cnnbench.schema import GROUP_SCHEMAS, TrainerConfig

    cfg = compose_config([f"{group}={option}"])
    assert OmegaConf.get_type(cfg[group]) in GROUP_SCHEMAS[group].values()
    assert OmegaConf.get_type(cfg.trainer) is TrainerConfig
    assert OmegaConf.get_type(cfg.model) is dict
