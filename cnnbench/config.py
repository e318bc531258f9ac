"""Where the Hydra config tree lives, composing it outside ``@hydra.main``, the override syntax, the cache root.

The tree is the top-level ``conf/`` of the repository. A source checkout or an editable install reads
it in place; a wheel (``pip install .``) ships the same files as the package ``cnnbench.conf``.
"""

from __future__ import annotations

import copy
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, open_dict

PRIMARY_CONFIG = "train"


def cache_root() -> Path:
    """cnnbench's folder for what outlives a run (the dataset it downloads, compiled graphs, built kernels):
    ``~/.cache/cnnbench``, under ``$XDG_CACHE_HOME`` when set."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnbench"


def split_override(item: str) -> tuple[str, str | None]:
    """A command-line override's key and value, as Hydra's grammar writes them: ``optimizer.lr=0.1``,
    ``+key=v`` and ``++key=v`` (add), ``~key`` or ``~key=v`` (delete), ``group@package=option``. The key
    comes without its prefix and package; the value is None for a deletion without one."""
    key, sep, value = item.partition("=")
    return key.lstrip("+~").split("@", 1)[0], value if sep else None


def override_key(item: str) -> str:
    """``split_override``'s key alone: ``+trainer.ema.decay=0.99`` -> ``trainer.ema.decay``."""
    return split_override(item)[0]


def upgrade_overrides(overrides: Sequence[str]) -> list[str]:
    """Overrides written for the flat logger section of earlier versions, in today's spelling: with one
    tracker chosen (``logger=mlflow``), ``logger.tracking_uri=X`` is ``logger.mlflow.tracking_uri=X`` (each
    option's keys now live under its own name, so that several compose). Anything else is returned as it is."""
    chosen = [split_override(o)[1] for o in overrides if split_override(o)[0] == "logger" and not o.startswith("~")]
    if len(chosen) != 1 or not chosen[0] or not re.fullmatch(r"\w+", chosen[0]):
        return list(overrides)
    option, options = chosen[0], logger_options()
    upgraded = []
    for item in overrides:
        key = split_override(item)[0]
        head, _, rest = key.partition(".")
        if head == "logger" and rest and rest.split(".")[0] not in options:
            prefix = item[: len(item) - len(item.lstrip("+~"))]
            item = f"{prefix}logger.{option}.{rest}{item[len(prefix) + len(key):]}"
        upgraded.append(item)
    return upgraded


def logger_options() -> set[str]:
    """The names of the logger group's options (``conf/logger/*.yaml``)."""
    return {p.stem for p in (config_dir() / "logger").glob("*.yaml")}


def config_dir() -> Path:
    """Absolute path of the config tree (the folder holding ``train.yaml``)."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / f"{PRIMARY_CONFIG}.yaml").is_file():
        return checkout
    installed = Path(str(resources.files("cnnbench.conf")))
    if (installed / f"{PRIMARY_CONFIG}.yaml").is_file():
        return installed
    raise FileNotFoundError(f"cnnbench's config tree was not found in {checkout} nor in {installed}")


@dataclass(frozen=True)
class ConfigSource:
    """Which primary config to compose and where else to look for configs: what ``--config-name`` and
    ``--config-dir`` (``-cn``, ``-cd``) give ``cnnbench train``. ``extra_dir`` is searched after the
    packaged tree, as Hydra searches it, so a user's folder adds options and cannot shadow packaged ones."""

    config_name: str = PRIMARY_CONFIG
    extra_dir: str | None = None  # absolute path

    def search_path(self):
        """Hydra's search path for this source, built as ``@hydra.main`` builds it for the command line."""
        from hydra._internal.utils import create_config_search_path
        from hydra.core.config_search_path import SearchPathQuery

        search_path = create_config_search_path(f"file://{config_dir()}")
        if self.extra_dir is not None:
            search_path.prepend(provider="command-line", path=f"file://{self.extra_dir}",
                                anchor=SearchPathQuery(provider="schema"))
        return search_path


PACKAGED = ConfigSource()


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False,
                   source: ConfigSource = PACKAGED) -> DictConfig:
    """Compose ``train.yaml`` with Hydra overrides, as ``cnnbench train`` would, without running.

    Inside a running ``cnnbench train`` job Hydra is already initialized with this config tree, and a
    second initialization is refused: compose with it as it is.

    One command composes the same overrides several times (the pre-launch checks, the run folder's
    claim, Hydra's own run); each composition costs 0.2-0.3 s, so the result is kept per list of
    overrides, and every call gets its own copy to change.
    """
    from hydra.core.global_hydra import GlobalHydra

    overrides = upgrade_overrides(overrides)
    key = (tuple(overrides), GlobalHydra.instance().is_initialized(), source)
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose(list(overrides), source)
        while len(_COMPOSED) > COMPOSED_KEPT:  # a big sweep composes every job: keep only the latest
            _COMPOSED.popitem(last=False)
    _COMPOSED.move_to_end(key)
    cfg = copy.deepcopy(_COMPOSED[key])
    if not return_hydra_config:
        with open_dict(cfg):
            del cfg["hydra"]  # as hydra.compose(return_hydra_config=False) leaves it
    return cfg


# (overrides, Hydra already initialized) -> the composed config, its hydra node included; least recently
# used first
_COMPOSED: OrderedDict[tuple[tuple[str, ...], bool, ConfigSource], DictConfig] = OrderedDict()
COMPOSED_KEPT = 16


def register_all_schemas() -> None:
    """Put every schema the files under ``conf/`` name into Hydra's ConfigStore: the sections' and groups'
    (:mod:`cnnbench.schema`) and each tracker's (:mod:`cnnbench.tracking.registry`, beside its tracker)."""
    from .schema import register_schemas
    from .tracking.registry import register_tracker_schemas

    register_schemas()
    register_tracker_schemas()


def _compose(overrides: list[str], source: ConfigSource) -> DictConfig:
    from hydra import compose
    from hydra._internal.hydra import Hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.version import setbase

    register_all_schemas()  # conf/'s files name their schemas
    if GlobalHydra.instance().is_initialized():  # inside a job: Hydra's own search path, the command's
        return compose(config_name=source.config_name, overrides=overrides, return_hydra_config=True)
    # hydra.initialize_config_dir takes one folder; --config-dir needs the search path @hydra.main builds
    setbase("1.3")
    Hydra.create_main_hydra2(task_name=PRIMARY_CONFIG, config_search_path=source.search_path())
    try:
        return compose(config_name=source.config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
