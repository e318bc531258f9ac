"""A run folder's recorded config, read through the preparation step: today's schema, the recorded facts.

``eval``, ``predict``, ``export``, ``inspect``, ``report`` and ``track`` read a finished run folder, which an
older cnnbench may have written: keys added since are missing, the ``logger`` section is one flat option
(``logger: {name: mlflow, ...}``). :func:`compose_recorded` composes today's config with the options the run
chose (Hydra's record of them, ``.hydra/hydra.yaml``) and lays the recorded config over it: a missing key
gets today's default, every recorded value (the settled data facts: classes, channels, mean/std) stays, and
a key today's schema no longer has is dropped. Everything downstream then reads one shape.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import PRIMARY_CONFIG, ConfigSource, compose_config, config_dir
from ..runfolder.names import HYDRA_DIR
from ..tracking.registry import GROUP, upgrade_logger

logger = logging.getLogger(__name__)


def recorded_choices(run_dir: Path) -> tuple[dict[str, str], ConfigSource]:
    """The config group options a run chose (``hydra.runtime.choices``, Hydra's own groups left out) and the
    config source it was composed from (its ``--config-dir`` while that folder exists); none without a
    Hydra record (a run made by ``train()`` directly)."""
    try:
        hydra_cfg = OmegaConf.load(Path(run_dir) / HYDRA_DIR / "hydra.yaml").hydra
        runtime = hydra_cfg.get("runtime") or {}
        choices = {str(k): str(v) for k, v in (runtime.get("choices") or {}).items()
                   if v is not None and not str(k).startswith("hydra/")}
        extra = [str(s.path) for s in runtime.get("config_sources") or [] if s.provider == "command-line"]
        name = str((hydra_cfg.get("job") or {}).get("config_name") or PRIMARY_CONFIG)
    except Exception:  # noqa: BLE001 - no or an unreadable record: today's defaults
        return {}, ConfigSource()
    return choices, ConfigSource(config_name=name, extra_dir=extra[0] if extra and Path(extra[0]).is_dir() else None)


def compose_recorded(recorded: DictConfig, run_dir: Path | None = None) -> DictConfig:
    """``recorded`` (a run folder's ``.hydra/config.yaml``) composed onto today's config and schema: see the
    module's docstring. A record today's options cannot compose (an option removed since, a value today's
    schema refuses) is returned as recorded, its logger section in today's shape."""
    upgrade_logger(recorded)
    choices, source = recorded_choices(run_dir) if run_dir is not None else ({}, ConfigSource())
    choices.pop(GROUP, None)  # Hydra records no choice for a list of options: the section says which
    for group in NAMED_GROUPS:
        choices.setdefault(group, _option_of(group, recorded.get(group)))
    overrides = [f"{group}={option}" for group, option in choices.items() if option]
    loggers = list(recorded.get(GROUP) or {})
    if loggers:
        overrides.append(f"{GROUP}=[{','.join(loggers)}]")
    try:
        today = compose_config(overrides, source=source)
        given = OmegaConf.to_container(recorded, resolve=False)
        dropped: list[str] = []
        known = _known(given, today, "", dropped)
        with open_dict(today):
            if "model" in known:  # the network as built: its family's own arguments, none added
                today.model = known.pop("model")
            merged = OmegaConf.merge(today, known)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.debug("the recorded config does not compose with today's (%s): read as recorded", exc)
        return recorded
    if dropped:
        logger.debug("recorded keys no longer in the config, ignored: %s", ", ".join(dropped))
    return merged


NAMED_GROUPS = ("dataset", "optimizer", "scheduler", "augment")  # groups whose options write their name


def _option_of(group: str, section: Any) -> str | None:
    """The option of ``group`` a section without Hydra's record of its choice came from: an image folder's, or
    the option file its ``name`` names (``optimizer.name=adam``); None (today's default) otherwise."""
    if not isinstance(section, DictConfig):
        return None
    if group == "dataset" and section.get("format") == "image_folder":
        return "image_folder"
    name = section.get("name")
    return str(name) if isinstance(name, str) and (config_dir() / group / f"{name}.yaml").is_file() else None


def _known(given: Any, today: Any, prefix: str, dropped: list[str]) -> Any:
    """``given`` without the keys of typed sections that ``today`` no longer has (named in ``dropped``); an
    untyped section (``model``: each family its own keyword arguments) keeps all of its keys."""
    if not isinstance(given, dict) or not isinstance(today, DictConfig):
        return given
    typed = OmegaConf.get_type(today) not in (dict, None)
    kept = {}
    for key, value in given.items():
        if key in today:
            child = None if OmegaConf.is_missing(today, key) else today[key]
            kept[key] = _known(value, child if isinstance(child, DictConfig) else None, f"{prefix}{key}.", dropped)
        elif typed:
            dropped.append(f"{prefix}{key}")
        else:
            kept[key] = value
    return kept
